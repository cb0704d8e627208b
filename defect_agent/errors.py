"""Errors users see. Each carries a message that says what to do next."""

from __future__ import annotations

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
