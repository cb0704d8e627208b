"""Few-shot defect naming on DeepPCB (issue 4 acceptance), shared by `benchmarks/bench_fewshot.py` and
`defect-agent eval fewshot`.

Queries: the DeepPCB validation groups (boards never used for training): crops of the six defect classes and
defect-free template crops. Support: k examples per class (the six defects and `normal`) drawn from the train
groups, several seeds. Methods, all through `vision.embedder.texture.TextureScorer` on the `pcb` line:
- zero-shot: prompt ensembles only (prototype_weight 0);
- prototypes: image prototypes only (prototype_weight 1);
- combined: the convex mix, weight and prototype scale tuned on the train part (support and queries both from
  train, disjoint), never on validation.
Figures: 7-way accuracy (normal + 6 defects: p(normal) = 1 - defect score, p(class) = defect score x class
probability), 6-way naming accuracy on the defect crops, defect-vs-normal AUROC of the defect score."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from defect_agent.config import load_line
from vision.embedder.metrics import auroc
from vision.embedder.samples import CropSet, deeppcb_crops
from vision.embedder.texture import NORMAL_KEY, TextureScorer

log = logging.getLogger(__name__)

WEIGHT_GRID = (0.25, 0.5, 0.75)
SCALE_GRID = (10.0, 25.0, 50.0, 100.0)


class MethodResult(BaseModel):
    """Few-shot figures of one method: 7-way and 6-way accuracy, defect-vs-normal AUROC, spread over seeds."""

    acc7: float
    acc6: float
    auroc: float
    acc7_std: float = 0.0
    auroc_std: float = 0.0


class FewshotResult(BaseModel):
    """A whole few-shot run on DeepPCB: query and support counts, the tuned mix and every method's results per k."""

    embedder: str
    queries: dict[str, int]
    support_pool: dict[str, int]
    ks: list[int]
    seeds: list[int]
    tuned: dict[str, float]
    tuning_grid: list[dict]
    zero_shot: MethodResult
    results: dict[str, dict[str, MethodResult]]  # str(k) -> method -> result

    def markdown(self) -> str:
        rows = [
            "| support k / class | method | 7-way acc (normal + 6) | 6-way naming acc | defect-vs-normal AUROC |",
            "|---|---|---|---|---|",
        ]
        z = self.zero_shot
        rows.append(f"| 0 | zero-shot prompts | {z.acc7:.3f} | {z.acc6:.3f} | {z.auroc:.3f} |")
        for k in self.ks:
            for method, r in self.results[str(k)].items():
                rows.append(
                    f"| {k} | {method} | {r.acc7:.3f} ± {r.acc7_std:.3f} | {r.acc6:.3f} | "
                    f"{r.auroc:.3f} ± {r.auroc_std:.3f} |"
                )
        return "\n".join(rows)


def embed_crop_set(embedder, crops: CropSet, progress: bool = True) -> np.ndarray:
    """Embeddings of a crop set. For the default model, the cached frozen trunk features plus the trained head
    give exactly `embed_images` (same transform, same trunk) without re-running the tower."""
    import torch
    import torch.nn.functional as F

    from vision.embedder.features import image_features
    from vision.embedder.model import DEFAULT_MODEL

    if getattr(embedder, "name", None) == DEFAULT_MODEL and hasattr(embedder, "model"):
        _, pooled = image_features(embedder.model, crops, progress=progress)
        with torch.inference_mode():
            return F.normalize(embedder.model.visual.head(torch.from_numpy(pooled)), dim=-1).numpy()
    return embedder.embed_images(crops.crops)


def _evaluate(scorer: TextureScorer, vecs: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple:
    """(acc7, acc6, auroc) with labels indexing classes + ['normal'] (normal = len(classes))."""
    a = scorer.score_arrays(vecs)
    d, probs = a["defect"], a["class_probs"]
    p7 = np.concatenate([(d[:, None] * probs), (1 - d)[:, None]], axis=1)
    acc7 = float((p7.argmax(1) == labels).mean())
    is_def = labels < len(classes)
    acc6 = float((probs[is_def].argmax(1) == labels[is_def]).mean())
    return acc7, acc6, auroc(d, is_def)


def _prototypes(vecs: np.ndarray, labels: np.ndarray, classes: list[str], k: int, rng) -> dict[str, np.ndarray]:
    protos = {}
    for c, name in enumerate([*classes, NORMAL_KEY]):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(k, len(idx)), replace=False)
        m = vecs[pick].mean(0)
        protos[name] = m / np.linalg.norm(m)
    return protos


def run_fewshot(
    embedder,
    deeppcb_root: Path | str,
    ks: tuple[int, ...] = (1, 5, 20),
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    val_per_class: int = 150,
    val_normal: int = 300,
    train_per_class: int = 200,
    train_normal: int = 300,
    progress: bool = True,
) -> FewshotResult:
    line = load_line("pcb")
    classes = [c.name for c in line.classes if c.role == "defect"]
    names = [*classes, NORMAL_KEY]

    def load(split: str, per_class: int, normal: int) -> tuple[np.ndarray, np.ndarray, CropSet]:
        cs = deeppcb_crops(deeppcb_root, split, per_class, normal, 0, progress=progress)
        labels = np.array([names.index(k.split("/", 1)[1]) for k in cs.kinds])
        return embed_crop_set(embedder, cs, progress), labels, cs

    qv, ql, qset = load("val", val_per_class, val_normal)
    sv, sl, sset = load("train", train_per_class, train_normal)
    base = TextureScorer.from_line(line, embedder, prototype_weight=0.0)

    def scorer(protos, weight, scale) -> TextureScorer:
        return TextureScorer(
            line=line.name,
            normal_anchor=base.normal_anchor,
            defect_anchor=base.defect_anchor,
            class_anchors=dict(zip(base.class_names, base.class_matrix)),
            logit_scale=base.logit_scale,
            prototypes=protos,
            prototype_weight=weight,
            prototype_scale=scale,
        )

    # tune (weight, scale) on train: support and queries both from the train pool, disjoint, k = 5
    grid = []
    for weight, scale in itertools.product(WEIGHT_GRID, SCALE_GRID):
        accs = []
        for seed in seeds:
            rng = np.random.default_rng([seed, 991])
            perm = rng.permutation(len(sl))
            half = len(perm) // 2
            sup, qry = perm[:half], perm[half:]
            protos = _prototypes(sv[sup], sl[sup], classes, 5, rng)
            accs.append(_evaluate(scorer(protos, weight, scale), sv[qry], sl[qry], classes)[0])
        grid.append({"weight": weight, "scale": scale, "train_acc7": round(float(np.mean(accs)), 4)})
    best = max(grid, key=lambda g: g["train_acc7"])
    tuned = {"weight": best["weight"], "scale": best["scale"]}
    log.info("tuned on train: %s", tuned)

    z = _evaluate(base, qv, ql, classes)
    zero = MethodResult(acc7=round(z[0], 4), acc6=round(z[1], 4), auroc=round(z[2], 4))
    results: dict[str, dict[str, MethodResult]] = {}
    for k in ks:
        per_method: dict[str, list[tuple]] = {"prototypes only": [], "combined (tuned mix)": []}
        for seed in seeds:
            rng = np.random.default_rng([seed, k, 7])
            protos = _prototypes(sv, sl, classes, k, rng)
            per_method["prototypes only"].append(_evaluate(scorer(protos, 1.0, tuned["scale"]), qv, ql, classes))
            per_method["combined (tuned mix)"].append(
                _evaluate(scorer(protos, tuned["weight"], tuned["scale"]), qv, ql, classes)
            )
        results[str(k)] = {
            m: MethodResult(
                acc7=round(float(np.mean([r[0] for r in rs])), 4),
                acc6=round(float(np.mean([r[1] for r in rs])), 4),
                auroc=round(float(np.mean([r[2] for r in rs])), 4),
                acc7_std=round(float(np.std([r[0] for r in rs])), 4),
                auroc_std=round(float(np.std([r[2] for r in rs])), 4),
            )
            for m, rs in per_method.items()
        }
    return FewshotResult(
        embedder=embedder.version,
        queries=qset.counts(),
        support_pool=sset.counts(),
        ks=list(ks),
        seeds=list(seeds),
        tuned=tuned,
        tuning_grid=grid,
        zero_shot=zero,
        results=results,
    )
