"""The batch's thread count, picked by measurement while it runs.

A line PC is rarely idle: with a second process busy, torch at 2 intra-op threads on 2 cores ran the detector 6-18x
slower than at 1 thread, while on an idle machine 2 threads were 1.5x faster (issue 23's measurements). No fixed
count is right for both, so under `threads: auto` the batch times its own batches: it tries 1 thread and every core
in turn, keeps the faster per image, and tries the other again every `recheck` batches, when the load may have
changed."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from defect_agent.runtime import set_threads

log = logging.getLogger(__name__)


class ThreadTuner:
    """Alternate the candidate thread counts for `trials` batches each, then run the fastest (ms per image, the
    median of its trials); re-measure every `recheck` batches. `fixed`: no tuning, that count throughout."""

    def __init__(
        self,
        candidates: Sequence[int] | None = None,
        *,
        trials: int = 2,
        recheck: int = 50,
        fixed: int | None = None,
    ) -> None:
        cores = os.cpu_count() or 1
        self.candidates = sorted(set(candidates or (1, cores)))
        self.trials, self.recheck, self.fixed = trials, recheck, fixed
        self._samples: dict[int, list[float]] = {n: [] for n in self.candidates}
        self._batches = 0
        self.current = fixed if fixed is not None else self.candidates[-1]
        self.choice: int | None = fixed

    @property
    def tuning(self) -> bool:
        return self.fixed is None and len(self.candidates) > 1

    def next_threads(self) -> int:
        """The count to run the next batch with (applied to torch / faiss here)."""
        if self.tuning:
            if self._batches and self._batches % self.recheck == 0:
                self._samples = {n: [] for n in self.candidates}  # the load may have changed: measure again
                self.choice = None
            pending = [n for n in self.candidates if len(self._samples[n]) < self.trials]
            if pending:
                # alternate, so that a load change during the trials hits every candidate alike
                self.current = min(pending, key=lambda n: (len(self._samples[n]), n))
            else:
                self.current = self._pick()
        set_threads(self.current)
        return self.current

    def record(self, ms_per_image: float) -> None:
        """The last batch's wall time per image at `current` threads."""
        self._batches += 1
        if self.tuning and len(self._samples[self.current]) < self.trials:
            self._samples[self.current].append(ms_per_image)

    def _pick(self) -> int:
        medians = {n: sorted(v)[len(v) // 2] for n, v in self._samples.items() if v}
        best = min(medians, key=lambda n: medians[n])
        if best != self.choice:
            log.info(
                "threads: %d picked by measurement (%s ms per image)",
                best,
                ", ".join(f"{n} thread(s) {m:.0f}" for n, m in sorted(medians.items())),
            )
            self.choice = best
        return best

    def figures(self) -> dict[str, float]:
        """The last measurement: ms per image per candidate (median of its trials)."""
        return {str(n): round(sorted(v)[len(v) // 2], 1) for n, v in self._samples.items() if v}


def tuner_for(setting: int | str | None, engine: str = "torch") -> ThreadTuner:
    """A tuner for a config / CLI threads setting: 'auto' tunes, anything else is fixed at what it means. On the
    onnx engine the count is the one the sessions were built with (`chosen_threads`): onnxruntime cannot change it
    afterwards, so there is nothing to tune."""
    from defect_agent.runtime import chosen_threads, resolve_threads, threads_pinned

    if engine == "onnx":
        return ThreadTuner(fixed=chosen_threads())
    if setting == "auto" and not threads_pinned():
        return ThreadTuner()
    return ThreadTuner(fixed=resolve_threads(setting))
