"""`defect-agent train embedder`: LiT-style alignment of the two pretrained towers on (crop, description) pairs.

Both towers stay locked (optionally EfficientNet's last stage unlocks, `unlock_image_stage`). What trains:
1. the image and text projection MLPs and the logit scale, contrastively (multi-positive InfoNCE both ways: every
   text whose kind set holds the crop's kind is a positive) on cached frozen features, English texts;
2. then, with everything else fixed, the embedding rows of the added Chinese characters, so that Chinese texts land
   on the image-kind centroids and the English anchors of their kinds (MiniLM itself knows few CJK characters).

Data: battery_tab generated crops + DeepPCB train-part crops (`vision.embedder.samples`); metrics on held-out
battery_tab seeds and the DeepPCB validation groups: image->text top-1 over the kinds of the crop's line (en / zh
anchors) and defect-vs-normal AUROC of the texture scorer (vision.embedder.texture, the line's prompt ensembles)."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import cast

import numpy as np
from pydantic import BaseModel, Field

from defect_agent.config import load_line
from defect_agent.errors import EmptyInput
from defect_agent.paths import models_dir, shared_dataset
from vision.embedder import architecture, checkpoint, towers
from vision.embedder.descriptions import TextItem, line_texts
from vision.embedder.features import image_features, text_pooled, trunk_head
from vision.embedder.metrics import auroc, top1
from vision.embedder.samples import BATTERY_TRAIN_STREAM, BATTERY_VAL_STREAM, CropSet, battery_tab_crops, deeppcb_crops

log = logging.getLogger(__name__)

UNLOCK_PREFIXES = ["visual.trunk.blocks.6", "visual.trunk.conv_head", "visual.trunk.bn2"]
HEAD_PREFIXES = ["visual.head", "text.proj", "logit_scale"]


class TrainSettings(BaseModel):
    """Everything `train_embedder` needs: output path, data sizes per line and split, and the optimisation schedule."""

    out: Path = Field(default_factory=lambda: models_dir() / "embedder" / "defect-lite-minilm.pt")
    seed: int = 0
    embed_dim: int = architecture.EMBED_DIM
    image_size: int = 224
    lines: list[str] = ["battery_tab", "pcb"]
    battery_train_images: int = 480
    battery_val_images: int = 120
    deeppcb: Path | None = None  # default: <shared datasets>/deeppcb; absent -> battery_tab only
    pcb_train_per_class: int = 200
    pcb_train_normal: int = 300
    pcb_val_per_class: int = 150
    pcb_val_normal: int = 300
    steps: int = 1500
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    feature_dropout: float = 0.1
    zh_steps: int = 150
    zh_batch: int = 48
    zh_lr: float = 2e-2
    unlock_image_stage: bool = False
    unlock_lr: float = 1e-4
    eval_every: int = 500
    progress: bool = True


class SplitMetrics(BaseModel):
    """Embedder quality on one line's crops of a split: image->text top-1 per prompt language and defect AUROC."""

    n: int
    top1_en: float
    top1_zh: float
    top1_both: float
    defect_auroc: float | None = None


class TrainReport(BaseModel):
    """What an embedder training run produced: the checkpoint, its size and hash, timings, data counts and metrics."""

    out: Path
    sha256: str
    size_bytes: int
    seconds: dict[str, float]
    counts: dict[str, dict[str, int]]
    metrics: dict[str, dict[str, SplitMetrics]]  # split -> line -> metrics
    trainable_params: int
    added_tokens: int
    logit_scale: float
    settings: dict


# ---------------------------------------------------------------------------------------------- data


def build_crop_sets(st: TrainSettings) -> dict[str, dict[str, CropSet]]:
    """split -> line -> crops. DeepPCB contributes its train groups to training, its validation groups to val."""
    sets: dict[str, dict[str, CropSet]] = {"train": {}, "val": {}}
    if "battery_tab" in st.lines:
        sets["train"]["battery_tab"] = battery_tab_crops(
            st.battery_train_images, st.seed, BATTERY_TRAIN_STREAM, progress=st.progress
        )
        sets["val"]["battery_tab"] = battery_tab_crops(
            st.battery_val_images, st.seed, BATTERY_VAL_STREAM, progress=st.progress
        )
    if "pcb" in st.lines:
        root = st.deeppcb or shared_dataset("deeppcb")
        if root is None or not Path(root).is_dir():
            log.warning("DeepPCB not found (%s): training on battery_tab only", root)
        else:
            sets["val"]["pcb"] = deeppcb_crops(
                root, "val", st.pcb_val_per_class, st.pcb_val_normal, st.seed, progress=st.progress
            )
            sets["train"]["pcb"] = deeppcb_crops(
                root, "train", st.pcb_train_per_class, st.pcb_train_normal, st.seed, progress=st.progress
            )
    if not sets["train"]:
        raise EmptyInput("no training crops: no line among " + ", ".join(st.lines) + " produced data")
    return sets


class _Features:
    """Cached tower features of one split, all lines concatenated."""

    def __init__(self, model, sets: dict[str, CropSet], st: TrainSettings) -> None:
        maps, pooled, kinds, lines = [], [], [], []
        for line, cs in sets.items():
            m, p = image_features(model, cs, st.image_size, progress=st.progress)
            maps.append(m)
            pooled.append(p)
            kinds.extend(cs.kinds)
            lines.extend([line] * len(cs))
        self.maps = np.concatenate(maps) if st.unlock_image_stage else None
        self.pooled = np.concatenate(pooled)
        self.kinds = kinds
        self.lines = lines


# ---------------------------------------------------------------------------------------------- losses


def multi_positive_nce(logits, positives):
    """-log of the softmax mass on the positives, averaged over rows (rows without a positive are skipped)."""
    import torch

    logp = torch.log_softmax(logits, dim=1)
    masked = logp.masked_fill(~positives, float("-inf"))
    has = positives.any(1)
    return -(torch.logsumexp(masked[has], dim=1)).mean()


# ---------------------------------------------------------------------------------------------- training


def _set_trainable(model, st: TrainSettings) -> list[str]:
    prefixes = HEAD_PREFIXES + (UNLOCK_PREFIXES if st.unlock_image_stage else [])
    for name, p in model.named_parameters():
        p.requires_grad = any(name == q or name.startswith(q + ".") for q in prefixes)
    return prefixes


def _image_embed(model, feats: _Features, idx, train: bool, st: TrainSettings):
    import torch
    import torch.nn.functional as F

    if st.unlock_image_stage:
        assert feats.maps is not None  # _Features keeps the maps under the same settings
        x = trunk_head(model.visual.trunk, torch.from_numpy(feats.maps[idx]).float())
    else:
        x = torch.from_numpy(feats.pooled[idx])
    if train and st.feature_dropout > 0:
        x = F.dropout(x, st.feature_dropout, training=True)
    return F.normalize(model.visual.head(x), dim=-1)


def _text_embed_from_pooled(model, pooled):
    import torch.nn.functional as F

    return F.normalize(model.text.proj(pooled), dim=-1)


def _train_heads(
    model,
    feats: _Features,
    texts: list[TextItem],
    text_pooled_en,
    st: TrainSettings,
    kind_index: dict[str, int],
    val_eval,
) -> list[dict]:
    import torch

    rng = np.random.default_rng(st.seed)
    en = [i for i, t in enumerate(texts) if t.lang == "en"]
    kind_of_img = np.array([kind_index[k] for k in feats.kinds])
    by_kind = defaultdict(list)
    for i, k in enumerate(kind_of_img):
        by_kind[k].append(i)
    kinds_present = sorted(by_kind)
    text_kinds = [{kind_index[k] for k in texts[i].kinds if k in kind_index} for i in en]
    texts_of_kind = {k: [j for j, ks in enumerate(text_kinds) if k in ks] for k in kinds_present}
    missing = [k for k in kinds_present if not texts_of_kind[k]]
    if missing:
        raise ValueError(f"crop kinds without texts: {missing}")
    pos_table = np.zeros((len(kind_index), len(en)), dtype=bool)
    for j, text_ks in enumerate(text_kinds):
        for k in text_ks:
            pos_table[k, j] = True

    head_params = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("visual.trunk") and n != "logit_scale"
    ]
    unlock_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.trunk")]
    groups = [
        {"params": head_params, "lr": st.lr, "weight_decay": st.weight_decay},
        {"params": [model.logit_scale], "lr": st.lr, "weight_decay": 0.0},
    ]
    if unlock_params:
        groups.append({"params": unlock_params, "lr": st.unlock_lr, "weight_decay": st.weight_decay})
    opt = torch.optim.AdamW(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    warmup = max(1, st.steps // 20)
    history = []
    model.train()
    model.visual.trunk.eval()  # BatchNorm statistics stay those of ImageNet, also in an unlocked stage
    from tqdm import tqdm

    for step in tqdm(range(1, st.steps + 1), desc="train projections", unit="step", disable=not st.progress):
        factor = (
            step / warmup
            if step <= warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, st.steps - warmup)))
        )
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * factor
        # class-balanced batch: a kind uniformly, then one of its crops, then one positive English text
        ks = rng.choice(kinds_present, size=st.batch)
        idx = np.array([by_kind[k][rng.integers(len(by_kind[k]))] for k in ks])
        tj = np.array([texts_of_kind[k][rng.integers(len(texts_of_kind[k]))] for k in ks])
        img = _image_embed(model, feats, idx, True, st)
        txt = _text_embed_from_pooled(model, text_pooled_en[tj])
        pos = torch.from_numpy(pos_table[ks][:, tj])
        scale = model.logit_scale.exp()
        logits = scale * img @ txt.T
        loss = 0.5 * (multi_positive_nce(logits, pos) + multi_positive_nce(logits.T, pos.T))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % st.eval_every == 0 or step == st.steps:
            entry = {"step": step, "loss": round(float(loss), 4), "logit_scale": round(float(scale), 2)}
            if val_eval is not None:
                entry["val_top1_en"] = val_eval()
            history.append(entry)
            log.info("step %d: %s", step, entry)
            model.train()
            model.visual.trunk.eval()
    model.eval()
    return history


def _train_added_tokens(
    model,
    tokenizer,
    first_id: int,
    feats: _Features,
    texts: list[TextItem],
    kind_index: dict[str, int],
    st: TrainSettings,
    text_pooled_en,
) -> list[dict]:
    """Fit only the added characters' embedding rows: Chinese texts -> their kinds' image centroids and English
    text anchors (multi-positive softmax over all kinds)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    zh = [t for t in texts if t.lang == "zh"]
    if not zh:
        return []
    n_kinds = len(kind_index)
    with torch.no_grad():
        all_idx = np.arange(len(feats.kinds))
        img = torch.cat(
            [_image_embed(model, feats, all_idx[s : s + 512], False, st) for s in range(0, len(all_idx), 512)]
        )
        kind_of_img = torch.tensor([kind_index[k] for k in feats.kinds])
        img_anchor = torch.zeros(n_kinds, img.shape[1])
        img_anchor.index_add_(0, kind_of_img, img)
        en = [t for t in texts if t.lang == "en"]
        en_emb = _text_embed_from_pooled(model, text_pooled_en)
        txt_anchor = torch.zeros(n_kinds, img.shape[1])
        for t, e in zip(en, en_emb):
            if t.role != "state":  # class / normal sentences: one kind each
                for k in t.kinds:
                    if k in kind_index:
                        txt_anchor[kind_index[k]] += e
        img_anchor = F.normalize(img_anchor, dim=-1)
        txt_anchor = F.normalize(txt_anchor, dim=-1)
        scale = float(model.logit_scale.exp())
    pos_all = torch.zeros(len(zh), n_kinds, dtype=torch.bool)
    for i, t in enumerate(zh):
        for k in t.kinds:
            if k in kind_index:
                pos_all[i, kind_index[k]] = True
    keep = pos_all.any(1)

    for p in model.parameters():
        p.requires_grad = False
    emb = model.text.transformer.get_input_embeddings()
    emb.weight.requires_grad = True
    mask = torch.zeros(emb.weight.shape[0], 1)
    mask[first_id:] = 1.0
    handle = emb.weight.register_hook(lambda g: g * mask)
    opt = torch.optim.Adam([emb.weight], lr=st.zh_lr)
    rng = np.random.default_rng(st.seed + 1)
    usable = np.flatnonzero(keep.numpy())
    history = []
    model.eval()  # no dropout in the frozen BERT while its inputs train
    try:
        for step in tqdm(range(1, st.zh_steps + 1), desc="train zh tokens", unit="step", disable=not st.progress):
            pick = rng.choice(usable, size=min(st.zh_batch, len(usable)), replace=False)
            pooled = text_pooled(model, tokenizer, [zh[i].text for i in pick], grad=True)
            e = _text_embed_from_pooled(model, pooled)
            pos = pos_all[pick]
            loss = multi_positive_nce(scale * e @ img_anchor.T, pos) + multi_positive_nce(scale * e @ txt_anchor.T, pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == st.zh_steps:
                history.append({"step": step, "loss": round(float(loss), 4)})
    finally:
        handle.remove()
        emb.weight.requires_grad = False
    return history


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, feats: _Features, st: TrainSettings) -> dict[str, SplitMetrics]:
    """Per line: image->text top-1 over the line's crop kinds (anchors = mean embedding of each kind's class /
    normal sentences, English, Chinese, both) and defect-vs-normal AUROC of the texture scorer."""
    import torch

    from vision.embedder.model import Embedder
    from vision.embedder.texture import TextureScorer

    model.eval()
    with torch.no_grad():
        all_idx = np.arange(len(feats.kinds))
        vecs = torch.cat(
            [_image_embed(model, feats, all_idx[s : s + 512], False, st) for s in range(0, len(all_idx), 512)]
        ).numpy()
    emb = Embedder(model, tokenizer, transform=None, name=architecture.MODEL_NAME, version="training")
    out: dict[str, SplitMetrics] = {}
    lines = np.array(feats.lines)
    for line_name in sorted(set(feats.lines)):
        line = load_line(line_name)
        lt = line_texts(line)
        rows = np.flatnonzero(lines == line_name)
        v = vecs[rows]
        kinds = lt.kinds
        truth = np.array([kinds.index(feats.kinds[r].split("/", 1)[1]) for r in rows])
        items = [t for t in lt.items if t.role != "state"]
        text_vecs = emb.embed_texts([t.text for t in items])  # one pass; anchors below index into it
        accs = {}
        for lang in ("en", "zh", "both"):
            anchors = []
            for k in kinds:
                key = f"{line_name}/{k}"
                rows_k = [i for i, t in enumerate(items) if key in t.kinds and (lang == "both" or t.lang == lang)]
                e = text_vecs[rows_k].mean(0)
                anchors.append(e / np.linalg.norm(e))
            accs[lang] = top1(v @ np.stack(anchors).T, truth)
        scorer = TextureScorer.from_line(line, emb)
        defect = scorer.score_arrays(v)["defect"]
        is_defect = np.array([kinds[t] in lt.defect_kinds for t in truth])
        au = auroc(defect, is_defect) if 0 < is_defect.sum() < len(is_defect) else None
        out[line_name] = SplitMetrics(
            n=len(rows),
            top1_en=round(accs["en"], 4),
            top1_zh=round(accs["zh"], 4),
            top1_both=round(accs["both"], 4),
            defect_auroc=None if au is None else round(au, 4),
        )
    return out


# ---------------------------------------------------------------------------------------------- entry point


def train_embedder(st: TrainSettings | None = None) -> TrainReport:
    import torch

    from defect_agent.runtime import set_threads

    st = st or TrainSettings()
    set_threads()
    torch.manual_seed(st.seed)
    np.random.seed(st.seed)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    cfg = architecture.model_config(st.embed_dim, st.image_size)
    model, tokenizer = architecture.build_model(cfg)
    texts: list[TextItem] = []
    for name in st.lines:
        texts.extend(line_texts(load_line(name)).items)
    # every Chinese character of every line config (also words not in training sentences, e.g. derived defects)
    config_zh = []
    from defect_agent.config import available_lines

    for name in available_lines():
        line = load_line(name)
        config_zh.extend(line_zh_words(line))
    added = architecture.unknown_chars([t.text for t in texts] + config_zh, tokenizer)
    first_id = architecture.add_tokens(model, tokenizer, added) if added else None
    kind_keys = sorted({k for t in texts for k in t.kinds})
    kind_index = {k: i for i, k in enumerate(kind_keys)}

    sets = build_crop_sets(st)
    timings["crops"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    train_feats = _Features(model, sets["train"], st)
    val_feats = _Features(model, sets["val"], st) if sets["val"] else None
    timings["tower_features"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    en_texts = [t.text for t in texts if t.lang == "en"]
    en_pooled = torch.cat([text_pooled(model, tokenizer, en_texts[s : s + 128]) for s in range(0, len(en_texts), 128)])
    en_pooled = en_pooled.clone()
    prefixes = _set_trainable(model, st)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def quick_val() -> float:
        assert val_feats is not None  # only handed to training when there is a val split
        m = evaluate(model, tokenizer, val_feats, st)
        return round(float(np.mean([x.top1_en for x in m.values()])), 4)

    # the heads are small matrices: on 2 cores shared with other work, one thread is ~10x faster than two
    # (OpenMP threads spin against each other); the tower passes before and after keep the configured count
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if not st.unlock_image_stage else threads)
    try:
        history = _train_heads(
            model, train_feats, texts, en_pooled, st, kind_index, quick_val if val_feats is not None else None
        )
    finally:
        torch.set_num_threads(threads)
    timings["train_projections"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    zh_history = (
        _train_added_tokens(model, tokenizer, first_id, train_feats, texts, kind_index, st, en_pooled)
        if first_id is not None
        else []
    )
    timings["train_zh_tokens"] = time.perf_counter() - t3
    n_trainable += len(added) * model.text.transformer.get_input_embeddings().weight.shape[1]

    # evaluate what is shipped: the fp16 round trip of the trained parameters
    state = checkpoint.trained_state(model, prefixes, first_id)
    payload = {"state_dict": state}
    checkpoint.apply_state(model, payload, first_id)
    metrics = {"train": evaluate(model, tokenizer, train_feats, st)}
    if val_feats is not None:
        metrics["val"] = evaluate(model, tokenizer, val_feats, st)
    counts = {f"{split}/{line}": cs.counts() for split, by_line in sets.items() for line, cs in by_line.items()}
    timings["total"] = time.perf_counter() - t0
    info = {
        "command": "defect-agent train embedder",
        "settings": st.model_dump(mode="json", exclude={"progress"}),
        "counts": counts,
        "metrics": {s: {k: v.model_dump() for k, v in m.items()} for s, m in metrics.items()},
        "history": history,
        "zh_history": zh_history,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "trainable_params": n_trainable,
        "sources": _source_fingerprints(),
    }
    out = checkpoint.save_checkpoint(
        st.out,
        model=model,
        model_cfg=cfg,
        added_tokens=added,
        first_added_id=first_id,
        trainable_prefixes=prefixes,
        preprocess={
            "mean": list(towers.IMAGE_MEAN),
            "std": list(towers.IMAGE_STD),
            "image_size": st.image_size,
            "interpolation": "bicubic",
            "pad": "replicate-to-square",
        },
        train_info=info,
    )
    return TrainReport(
        out=out,
        sha256=towers.file_sha256(out),
        size_bytes=out.stat().st_size,
        seconds={k: round(v, 1) for k, v in timings.items()},
        counts=counts,
        metrics=metrics,
        trainable_params=n_trainable,
        added_tokens=len(added),
        logit_scale=round(float(model.logit_scale.exp()), 3),
        settings=info["settings"],
    )


def _source_fingerprints() -> dict[str, str]:
    """sha256 of the code that generates or cuts the training crops: a changed generator changes the data."""
    import vision.crops
    import vision.datasets.synth.battery_tab
    import vision.embedder.samples

    return {
        m.__name__: towers.file_sha256(cast(str, m.__file__))[:16]  # source modules: __file__ is set
        for m in (vision.datasets.synth.battery_tab, vision.crops, vision.embedder.samples)
    }


def line_zh_words(line) -> list[str]:
    """All Chinese strings of a line config (titles, subject words, class and derived synonyms / descriptions,
    prompts), so every character an operator may type for this line has its own token."""
    words: list[str] = [*line.title.zh, *line.subject.zh]
    for spec in [*line.classes, *line.derived]:
        words.extend(spec.synonyms.zh)
        words.extend(spec.description.zh)
    p = line.prompts
    words.extend([*p.templates.zh, *p.normal_states.zh, *p.defect_states.zh, *p.object_name.zh])
    return words
