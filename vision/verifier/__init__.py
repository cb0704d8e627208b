"""The class verifier of template lines: a small CNN that re-reads every detected box at full resolution as
(test, template, signed difference), relabels it and moves it onto the defect.

- `model`: `DefectVerifier` (load, verify, TTA), box encoding, the merge of overlapping boxes of one class
- `train`: samples (jittered annotations, the locator's own proposals, background) and the trainer
- `data`: verifier samples from DeepPCB boards
- `eval`: mAP of the pipeline's detections with and without the verifier
- `cli`: `defect-agent train verifier`, `eval verifier`
"""

from vision.verifier.model import DefectVerifier, VerifierMeta

__all__ = ["DefectVerifier", "VerifierMeta"]
