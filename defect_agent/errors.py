"""Errors users see. Each carries a message that says what to do next."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class DefectAgentError(Exception):
    """Base of all errors raised on bad input or missing artefacts; the CLI prints them without a traceback."""


class ModelFileMissing(DefectAgentError):
    """A model file is not on disk. Names the file and the command that produces it."""

    def __init__(self, path: Path | str, make_command: str, what: str = "model file") -> None:
        self.path = Path(path)
        self.make_command = make_command
        super().__init__(f"{what} not found: {self.path}. Create it with: {make_command}")


class ConfigError(DefectAgentError):
    """A configuration file is missing or invalid."""


class ImageReadError(DefectAgentError):
    """An image cannot be read or has the wrong size."""


class EmptyInput(DefectAgentError):
    """No images were found where some were expected."""


TRUST_ENV = "DEFECT_AGENT_TRUST_MODELS"  # os.pathsep-separated model files (or folders) accepted without the manifest
RECORD_COMMAND = "python -m defect_agent.files record"  # writes a file's sha256 into models/MANIFEST.json


class ModelFileRejected(DefectAgentError):
    """A model file was refused before any of it was loaded (digest mismatch or code in its pickle)."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


class ModelDigestMismatch(ModelFileRejected):
    """A file under models/ whose sha256 differs from models/MANIFEST.json, or that the manifest does not list.
    Says how to accept a user's own retrained model."""

    def __init__(self, path: Path | str, expected: str | None, actual: str, manifest: Path | str) -> None:
        self.expected = expected
        self.actual = actual
        self.manifest = Path(manifest)
        what = (
            f"sha256 {actual[:12]}… does not match {self.manifest} (expected {expected[:12]}…): the file changed "
            "since it was recorded"
            if expected
            else f"sha256 {actual[:12]}… is not listed in {self.manifest} (expected: an entry for it)"
        )
        super().__init__(
            path,
            f"refused to load model file {path}: {what}. Restore the shipped file, or, if it is your own retrained "
            f"model, accept it: for one run `{TRUST_ENV}={path}` (several: separated by '{os.pathsep}'), or for good "
            f"`{RECORD_COMMAND} {path}` (the `defect-agent train ...` commands record what they write)",
        )


class UnsafeModelFile(ModelFileRejected):
    """A checkpoint whose pickle references code outside the model classes a checkpoint needs: loading it could run
    that code, so it is refused before it is unpickled. Names the file and what it references."""

    def __init__(self, path: Path | str, references: list[str], make_command: str | None = None) -> None:
        self.references = list(references)
        shown = ", ".join(self.references[:5]) + (" …" if len(self.references) > 5 else "")
        again = f"; re-create it with: {make_command}" if make_command else ""
        super().__init__(
            path,
            f"refused to load model file {path}: its pickle references {shown}, outside the torch / ultralytics model "
            f"classes a checkpoint needs, and unpickling it could run code. Nothing of it was run. Use a checkpoint "
            f"from a source you trust{again}",
        )

    @staticmethod
    def blocked_by_weights_only(exc: BaseException) -> str | None:
        """What torch's weights_only unpickler refused (a global or an opcode), when `exc` or one of its causes is
        that refusal; None for any other failure."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, pickle.UnpicklingError) and "Weights only load failed" in str(seen):
                lines = [ln.strip() for ln in str(seen).splitlines()]
                return next((ln for ln in lines if "GLOBAL" in ln), None)
            seen = seen.__cause__ or seen.__context__
        return None
