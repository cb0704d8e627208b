"""End-to-end evaluation of instructions on data with ground truth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from agent.clauses import decide
from agent.groundtruth import battery_tab_findings, expected_match
from agent.verdict import DefectFinding
from defect_agent.paths import resolve
from vision.detection import Box


class QueryScore(BaseModel):
    """Precision / recall of one instruction's returned image set against the set implied by ground truth."""

    instruction: str
    family: str = ""
    precision: float
    recall: float
    returned: int
    expected: int
    correct: int | None = None  # returned and expected
    review: int  # images sent to review (counted as returned when matches_query)
    exact: bool | None = None  # the returned set is exactly the expected one (None: a report written before)
    counts: SetCounts | None = None  # with the findings' measurement uncertainty (what the fields above report)
    fixed_margin: SetCounts | None = None  # the same analysis decided with the fixed margin only


class SetCounts(BaseModel):
    """One instruction's images counted three ways: as answered (`matches_query`, review flag ignored), with the
    images sent to review left out of both sets, and with them counted as returned (a person will look)."""

    returned: int
    expected: int
    correct: int
    review: int  # images whose answer is uncertain (match_uncertain)
    decided_returned: int  # review images excluded
    decided_expected: int
    decided_correct: int
    flagged_returned: int  # review images counted as returned
    flagged_correct: int


class PooledFigures(BaseModel):
    """A family's decisions pooled, counted the three ways of `SetCounts`."""

    precision: float
    recall: float
    review: int
    precision_decided: float  # review images excluded from returned and expected
    recall_decided: float
    precision_flagged: float  # review images counted as returned
    recall_flagged: float


def set_counts(returned: set[str], expected: set[str], review: set[str]) -> SetCounts:
    decided_r, decided_e = returned - review, expected - review
    flagged = returned | review
    return SetCounts(
        returned=len(returned),
        expected=len(expected),
        correct=len(returned & expected),
        review=len(review),
        decided_returned=len(decided_r),
        decided_expected=len(decided_e),
        decided_correct=len(decided_r & decided_e),
        flagged_returned=len(flagged),
        flagged_correct=len(flagged & expected),
    )


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


def pooled_figures(counts: list[SetCounts]) -> PooledFigures:
    def total(field: str) -> int:
        return sum(getattr(c, field) for c in counts)

    expected, decided_expected = total("expected"), total("decided_expected")
    return PooledFigures(
        precision=_ratio(total("correct"), total("returned"), 1.0 if not expected else 0.0),
        recall=_ratio(total("correct"), expected, 1.0),
        review=total("review"),
        precision_decided=_ratio(
            total("decided_correct"), total("decided_returned"), 1.0 if not decided_expected else 0.0
        ),
        recall_decided=_ratio(total("decided_correct"), decided_expected, 1.0),
        precision_flagged=_ratio(total("flagged_correct"), total("flagged_returned"), 1.0 if not expected else 0.0),
        recall_flagged=_ratio(total("flagged_correct"), expected, 1.0),
    )


def decide_sets(
    query, findings: dict[str, list[DefectFinding]], expected: set[str], line, fusion
) -> tuple[SetCounts, SetCounts]:
    """The instruction decided on every image twice: with the findings' measurement uncertainty (as inspected), and
    with the fixed margin only (uncertainty stripped, as before issue 21 part 4), both from the same analysis."""
    out = []
    for strip in (False, True):
        returned, review = set(), set()
        for path, found in findings.items():
            copies = [f.model_copy(deep=True, update={"uncertainty": {}} if strip else None) for f in found]
            d = decide(query, copies, line, fusion)
            if d.matches_query:
                returned.add(path)
            if d.match_uncertain:
                review.add(path)
        out.append(set_counts(returned, expected, review))
    return out[0], out[1]


class QueryEvalReport(BaseModel):
    """What `evaluate_battery_tab` returns: one score per instruction on a generated battery_tab test set."""

    line: str
    images: int
    seed: int
    rows: list[QueryScore]
    exact_share: float | None = None  # instructions whose returned set is exactly right
    analyse_s: float | None = None  # the one analysis pass over the images (locate ... fuse), shared by all
    decide_s: float | None = None  # every instruction decided on every image
    wall_s: float | None = None  # the command's wall time, model loading and test-set generation included


def evaluate_battery_tab(instructions: list[str], n: int, seed: int, out: Path, use_kb: bool = True) -> QueryEvalReport:
    from agent.parser import parse_instruction
    from agent.pipeline import Inspector
    from vision.datasets.synth.battery_tab import generate_batch, read_truth

    out = resolve(out)
    paths = [str(p) for p in generate_batch(out / "images", n=n, seed=seed)]
    truths = {t.image: t for t in read_truth(out / "images" / "truth.jsonl")}
    kb_dir = None
    if use_kb:
        from knowledge_base.sample import ensure_sample_kb

        kb_dir = ensure_sample_kb(out / "kb")
    inspector = Inspector.from_config(line="battery_tab", kb_dir=kb_dir, use_kb=use_kb)
    queries = [parse_instruction(instruction, line="battery_tab") for instruction in instructions]
    t0 = time.perf_counter()
    # the query-independent part runs once per image; each instruction only re-decides
    findings_by_image = {p: inspector.analyse(_read(p, inspector)) for p in paths}
    analyse_s = time.perf_counter() - t0
    rows: list[QueryScore] = []
    for instruction, query in zip(instructions, queries):
        expected = {
            p
            for p in paths
            if expected_match(query, battery_tab_findings(truths[Path(p).name], inspector.line), inspector.line)
        }
        counts, fixed = decide_sets(query, findings_by_image, expected, inspector.line, inspector.app.fusion)
        rows.append(_row(instruction, "", counts, fixed))
    return QueryEvalReport(
        line="battery_tab",
        images=n,
        seed=seed,
        rows=rows,
        exact_share=exact_share(rows),
        analyse_s=round(analyse_s, 2),
        decide_s=round(time.perf_counter() - t0 - analyse_s, 2),
    )


def _row(instruction: str, family: str, counts: SetCounts, fixed: SetCounts) -> QueryScore:
    exact = counts.correct == counts.returned == counts.expected
    return QueryScore(
        instruction=instruction,
        family=family,
        precision=_ratio(counts.correct, counts.returned, 1.0 if not counts.expected else 0.0),
        recall=_ratio(counts.correct, counts.expected, 1.0),
        returned=counts.returned,
        expected=counts.expected,
        correct=counts.correct,
        review=counts.review,
        exact=exact,
        counts=counts,
        fixed_margin=fixed,
    )


def exact_share(rows: list[QueryScore]) -> float | None:
    """The share of instructions whose returned set is exactly the expected one (None without such rows)."""
    known = [r.exact for r in rows if r.exact is not None]
    return sum(known) / len(known) if known else None


def _read(path: str, inspector):
    from agent.images import read_image

    return read_image(path, inspector.line.image_size)


class FamilyScore(BaseModel):
    """Scores of one query family (class, count, logic, ...) of the pcb evaluation: mean and minimum over its
    queries, and pooled over all their decisions."""

    family: str
    queries: int
    precision_mean: float  # over the family's queries, each weighted alike (a query expecting one image too)
    recall_mean: float
    precision_min: float
    recall_min: float
    # every (query, image) decision of the family together: images rightly returned / all returned / all expected
    precision_pooled: float | None = None
    recall_pooled: float | None = None
    exact_share: float | None = None  # the family's instructions whose returned set is exactly right
    with_uncertainty: PooledFigures | None = None
    fixed_margin: PooledFigures | None = None


class PcbQueryEvalReport(BaseModel):
    """What `evaluate_pcb` returns: per-query and per-family scores over the DeepPCB validation boards and their
    defect-free templates."""

    line: str = "pcb"
    boards: int  # defective validation boards
    clean_boards: int  # their defect-free templates inspected as boards
    rows: list[QueryScore]
    families: list[FamilyScore]
    locator: str | None = None
    exact_share: float | None = None  # instructions whose returned set is exactly right
    # the shared pass: every image analysed once (locate ... fuse), then every instruction decided on it
    images: int | None = None  # boards + clean templates
    analyse_s: float | None = None
    decide_s: float | None = None
    wall_s: float | None = None  # the command's wall time, model loading included


def pcb_queries(path: Path | None = None) -> list[tuple[str, str]]:
    """(family, instruction) of every pcb query in the project's query set that a DeepPCB board can answer: scope
    queries are left out (DeepPCB file names carry no dates or lot ids)."""
    from agent.parser.queryset import load_queryset

    out = []
    for case in load_queryset(path)["queries"]:
        if case.get("line") == "pcb" and not case.get("scope") and case.get("family") != "scope":
            out.append((str(case.get("family", "?")), str(case["q"])))
    return out


def family_scores(rows: list[QueryScore]) -> list[FamilyScore]:
    by: dict[str, list[QueryScore]] = {}
    for row in rows:
        by.setdefault(row.family, []).append(row)
    out = []
    for f, rs in sorted(by.items()):
        pooled_p = pooled_r = None
        if all(r.correct is not None for r in rs):
            correct = sum(r.correct or 0 for r in rs)
            returned, expected = sum(r.returned for r in rs), sum(r.expected for r in rs)
            pooled_p = correct / returned if returned else (1.0 if not expected else 0.0)
            pooled_r = correct / expected if expected else 1.0
        out.append(
            FamilyScore(
                family=f,
                queries=len(rs),
                precision_mean=sum(r.precision for r in rs) / len(rs),
                recall_mean=sum(r.recall for r in rs) / len(rs),
                precision_min=min(r.precision for r in rs),
                recall_min=min(r.recall for r in rs),
                precision_pooled=pooled_p,
                recall_pooled=pooled_r,
                exact_share=exact_share(rs),
                with_uncertainty=pooled_figures([r.counts for r in rs if r.counts])
                if all(r.counts for r in rs)
                else None,
                fixed_margin=pooled_figures([r.fixed_margin for r in rs if r.fixed_margin])
                if all(r.fixed_margin for r in rs)
                else None,
            )
        )
    return out


def deeppcb_findings(
    inspector,
    root: Path,
    split: str,
    max_boards: int | None = None,
    templates: bool = False,
    progress: bool = False,
    skip_boards: int = 0,
) -> Iterator[tuple[str, list[DefectFinding], list[tuple[str, Box]], bool]]:
    """(image path, the pipeline's findings, annotated boxes, is a clean template) for the DeepPCB boards of one
    part of the fixed group split; `templates`: each board's defect-free template follows it, with no boxes."""
    from tqdm import tqdm

    from agent.images import read_image
    from vision.datasets.deeppcb import DEEPPCB_CLASSES, parse_annotation, scan_deeppcb, split_of
    from vision.reference import reference_composite

    names = inspector.line.class_names
    assert len(names) == len(DEEPPCB_CLASSES), f"line {inspector.line.name!r} does not have the six DeepPCB classes"
    size = inspector.line.image_size
    pairs = [p for p in scan_deeppcb(root) if split_of(p.group) == split][skip_boards:]
    pairs = pairs[:max_boards]
    for pair in tqdm(pairs, desc=f"DeepPCB {split} boards", unit="board", disable=not progress):
        boxes = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
        image = read_image(pair.test, size)
        found = inspector.analyse(image, locator_input=inspector.locator_input(str(pair.test), image))
        yield str(pair.test), found, [(names[c], b) for c, b in boxes], False
        if templates and pair.template is not None:  # the template is the same board without its defects
            temp = read_image(pair.template, size)
            composite = reference_composite(temp, temp) if inspector.uses_template else temp
            yield str(pair.template), inspector.analyse(temp, locator_input=composite), [], True


def evaluate_pcb(
    deeppcb: Path,
    queries: list[tuple[str, str]],
    use_kb: bool = False,
    kb_dir: Path | None = None,
    progress: bool = True,
    max_boards: int | None = None,
    skip_boards: int = 0,
) -> PcbQueryEvalReport:
    """Every query over the DeepPCB validation boards (fixed groups, never trained on) and their defect-free
    templates: the returned set against the set the annotations imply (same clause logic on exact findings).
    One pass: each image is analysed once (locate, verify, measure, embed, fuse) and every query decided on its
    findings, as `Inspector.inspect_image_many` does."""
    from agent.groundtruth import box_measurements, exact_finding
    from agent.parser import parse_instruction
    from agent.pipeline import Inspector

    inspector = Inspector.from_config(line="pcb", kb_dir=kb_dir, use_kb=use_kb)
    line = inspector.line
    mm = line.calibration.mm_per_px
    parsed = [(family, instruction, parse_instruction(instruction, line="pcb")) for family, instruction in queries]
    findings, truth = {}, {}
    boards = clean = 0
    t0 = time.perf_counter()
    for path, found, boxes, is_template in deeppcb_findings(
        inspector, deeppcb, "val", max_boards, templates=True, progress=progress, skip_boards=skip_boards
    ):
        findings[path] = found
        truth[path] = [exact_finding(cls, b, box_measurements(b, mm)) for cls, b in boxes]
        clean += is_template
        boards += not is_template
    analyse_s = time.perf_counter() - t0
    rows = []
    for family, instruction, query in parsed:
        expected = {path for path in findings if expected_match(query, truth[path], line)}
        counts, fixed = decide_sets(query, findings, expected, line, inspector.app.fusion)
        rows.append(_row(instruction, family, counts, fixed))
    return PcbQueryEvalReport(
        boards=boards,
        clean_boards=clean,
        rows=rows,
        families=family_scores(rows),
        locator=getattr(inspector.locator, "version", None),
        exact_share=exact_share(rows),
        images=len(findings),
        analyse_s=round(analyse_s, 2),
        decide_s=round(time.perf_counter() - t0 - analyse_s, 2),
    )
