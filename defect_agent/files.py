"""File primitives shared by every layer: content hashes of model and image files, crash-safe writes, and the
manifest of shipped model files (`models/MANIFEST.json`) that every model file under models/ is checked against
before it is loaded.

Accepting a user's own model file: `DEFECT_AGENT_TRUST_MODELS=path[:path...]` for a run (a folder trusts the files
below it), or `python -m defect_agent.files record PATH...` to write its digest into the manifest for good; the
training commands call `record_model` on what they write into models/."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from defect_agent.errors import TRUST_ENV, ConfigError, ModelDigestMismatch
from defect_agent.paths import models_dir, resolve

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "defect-agent-models/1"


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, memoised on (path, size, mtime): model files are hashed for every version string."""
    p = Path(path)
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=128)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(target: Path, data: bytes | memoryview, suffix: str = ".tmp") -> None:
    """Write to a temporary file beside `target`, fsync, then rename over it: a crash leaves the old file or the
    new one, never a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------------------ manifest


def manifest_path() -> Path:
    return models_dir() / MANIFEST_NAME


def _manifest_key(path: Path) -> str | None:
    """`path` relative to models/ ('locator/x.pt'), None outside it. Both the path as written and the path with
    links resolved are tried: a symlink placed in models/ must not escape the check, nor a models/ that is itself a
    link (the README test links it into a scratch root)."""
    root = models_dir()
    for candidate, base in (
        (Path(os.path.abspath(path)), Path(os.path.abspath(root))),
        (path.resolve(), root.resolve()),
    ):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base).as_posix()
    return None


def _read_manifest_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "files": {}}
    st = path.stat()
    return _manifest_cached(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _manifest_cached(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"cannot read the model manifest {path}: {exc}; restore it from the repository") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        raise ConfigError(f"{path} is not a {MANIFEST_FORMAT} manifest; restore it from the repository")
    return data


def read_manifest() -> dict[str, str]:
    """Shipped model files (relative to models/) and their sha256."""
    return {k: str(v["sha256"]) for k, v in _read_manifest_file(manifest_path())["files"].items()}


def trusted_model_paths() -> list[Path]:
    """Files and folders named in DEFECT_AGENT_TRUST_MODELS; a relative entry counts from the working directory and
    from the project root (where config paths count from)."""
    out: list[Path] = []
    for entry in os.environ.get(TRUST_ENV, "").split(os.pathsep):
        if entry.strip():
            out += [Path(entry).expanduser().resolve(), resolve(entry).resolve()]
    return out


def _is_trusted(path: Path) -> bool:
    real = path.resolve()
    return any(real == t or real.is_relative_to(t) for t in trusted_model_paths())


def verify_model_file(path: Path | str) -> str:
    """The file's sha256, after checking a file under models/ against models/MANIFEST.json (unless it is trusted
    through DEFECT_AGENT_TRUST_MODELS). Files elsewhere (a user's own path in a config) are not in the manifest; the
    loaders still refuse pickles that would run code. Raises `ModelDigestMismatch`."""
    p = Path(path)
    actual = file_sha256(p)
    key = _manifest_key(p)
    if key is None or key == MANIFEST_NAME:
        return actual
    expected = read_manifest().get(key)
    if expected == actual:
        return actual
    if _is_trusted(p):
        log.warning(
            "%s (sha256 %s) differs from %s, loaded because %s trusts it", p, actual[:12], MANIFEST_NAME, TRUST_ENV
        )
        return actual
    raise ModelDigestMismatch(p, expected, actual, manifest_path())


def record_model(path: Path | str) -> Path | None:
    """Write the sha256 (and size) of a model file under models/ into models/MANIFEST.json: the trainers call it on
    the file they write, which accepts it. A file outside models/ is left alone (returns None)."""
    p = Path(path)
    key = _manifest_key(p)
    if key is None or key == MANIFEST_NAME:
        return None
    target = manifest_path()
    data = _read_manifest_file(target)
    files = dict(data["files"])
    files[key] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    data = {**data, "files": dict(sorted(files.items()))}
    atomic_write(target, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    log.info("recorded %s (sha256 %s) in %s", key, files[key]["sha256"][:12], target)
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m defect_agent.files record PATH...`: accept model files under models/ by recording their digests.
    Exit 0, or 2 when a path is missing or lies outside models/."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m defect_agent.files", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record", help="record the sha256 of model files under models/").add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    status = 0
    for raw in args.paths:
        p = Path(raw)
        if not p.is_file():
            sys.stderr.write(f"not a file: {raw}\n")
            status = 2
        elif record_model(p) is None:
            sys.stderr.write(f"{raw} is not under {models_dir()}: files elsewhere are not in the manifest\n")
            status = 2
        else:
            sys.stdout.write(f"recorded {raw}: sha256 {file_sha256(p)[:12]} in {manifest_path()}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
