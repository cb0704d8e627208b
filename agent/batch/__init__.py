"""Scheduled batch inspection: a line's standing instructions (a profile) over captured images, resumable and
idempotent (results keyed by image content + model versions + instruction), with a JSONL / CSV / HTML report."""

from agent.batch.profile import BatchProfile, StandingInstruction, load_profile
from agent.batch.runner import BatchSummary, run_batch

__all__ = ["BatchProfile", "BatchSummary", "StandingInstruction", "load_profile", "run_batch"]
