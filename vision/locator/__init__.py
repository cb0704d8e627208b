"""The locator: an ultralytics YOLO detector, optionally a shared base plus one peft LoRA adapter per product line.

- `model`: `Locator` (load a line's detector, predict `Detection`s in original pixels), `LocatorPool` (one base,
  adapters switched per line)
- `yolo`: ultralytics behind the offline switches, local checkpoint loading, the commands that make each file
- `lora`: LoRA adapters on the detector's convolutions (inject, save / load safetensors, switch, merge)
- `train` / `adapter_train`: training a detector / an adapter from a YOLO data YAML
- `eval`: mAP50, mAP50-95, per-class recall and image-level miss rate on a split
- `cli` / `adapter_cli`: `defect-agent train locator|base|adapter`, `eval locator`, `export`
"""

from vision.locator.model import Locator, LocatorPool, shared_pool

__all__ = ["Locator", "LocatorPool", "shared_pool"]
