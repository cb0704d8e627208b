"""Several instructions over the same images in one pass: each image is read, located, measured, embedded and
retrieved once (`Inspector.inspect_image_many`), and only the decision runs per instruction. What `defect-agent
inspect "A" IMAGES --also "B" --also "C"` runs; the verdicts are those of one run per instruction (timings aside)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from agent.images import apply_scope
from agent.query import InspectionQuery
from agent.verdict import Verdict
from defect_agent.errors import DefectAgentError


class MixedLinesError(DefectAgentError):
    """Instructions of one run are about different product lines (one pass serves one line's models)."""


def parse_instructions(instructions: Sequence[str], line: str | None = None) -> list[InspectionQuery]:
    """Parse every instruction for one product line: `line` when given, else each instruction's own (its words,
    else the default line), which must then be the same for all. Raises MixedLinesError naming each line."""
    from agent.parser import parse_instruction

    queries = [parse_instruction(text, line=line) for text in instructions]
    lines = {q.line for q in queries}
    if len(lines) > 1:
        said = "; ".join(f"{q.line}: {q.instruction!r}" for q in queries)
        raise MixedLinesError(
            f"the instructions are about different product lines ({said}); one run inspects one line: pass "
            f"--line {' or --line '.join(sorted(lines))}, or run the lines separately"
        )
    return queries


def inspect_many(
    inspector,
    queries: Sequence[InspectionQuery],
    images: Iterable[str],
    k: int | None = None,
    lang: str | None = None,
) -> Iterator[Verdict]:
    """One verdict per (image, instruction), grouped per image in the order of `images`, each group in the order
    of `queries`; each image is analysed once for all the instructions whose scope keeps it. An instruction's scope
    and the line's references are applied as `Inspector.inspect` applies them, so an instruction sees exactly the
    images a run of its own would see. `k`: similar cases per defect (default: the most any instruction asks)."""
    for q in queries:
        if q.line != inspector.line.name:
            raise MixedLinesError(
                f"the instruction {q.instruction!r} is about line {q.line!r} but this inspector serves "
                f"{inspector.line.name!r}: pass --line {q.line}"
            )
    paths = list(images)
    kept = [set(_scoped(inspector, paths, q)) for q in queries]
    versions = inspector.versions()
    for path in paths:
        mine = [q for q, keep in zip(queries, kept) if path in keep]
        if mine:
            yield from inspector.inspect_image_many(mine, path, versions, k=k, lang=lang)


def _scoped(inspector, paths: list[str], query: InspectionQuery) -> list[str]:
    scoped = apply_scope(paths, query.scope)
    if inspector.uses_template and inspector.line.reference is not None:
        from vision.reference import drop_references

        scoped = drop_references(scoped, inspector.line.reference)
    return scoped
