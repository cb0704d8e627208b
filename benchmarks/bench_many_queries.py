"""Many instructions, one look: the wall time of one shared pass (each image analysed once, every instruction
decided on its findings: `inspect "A" IMAGES --also "B" ...`, `agent.many.inspect_many`) against one pass per
instruction (`Inspector.inspect` once per instruction, what N separate `inspect` runs do without the model
loading), in the same process, on the same images and instructions, and whether the verdicts are identical.

    python benchmarks/bench_many_queries.py --line pcb --images 20 --instructions 10
    python benchmarks/bench_many_queries.py --line battery_tab --images 20 --instructions 10

pcb: the first N DeepPCB validation boards (their `_temp` templates beside them) and N instructions of the query
set's pcb queries, taken in turn from each family; battery_tab: N generated cells (seed 4242) and the query set's
battery_tab instructions. No knowledge base unless --kb. Writes benchmarks/results/many_queries_<line>.json: per
mode the wall time, the locator calls (analyses) and ms per (image, instruction); the ratio per-instruction /
shared; verdicts identical (timings aside)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def line_instructions(line: str, n: int) -> list[tuple[str, str]]:
    """(family, instruction) of n instructions of the query set for `line`, taken in turn from each family so that
    a small n still mixes class, count, size and logic; scope instructions are left out (they pick images)."""
    from agent.parser.queryset import load_queryset

    by_family: dict[str, list[str]] = {}
    for case in load_queryset()["queries"]:
        if case.get("line") == line and not case.get("scope") and case.get("family") != "scope":
            by_family.setdefault(str(case.get("family", "?")), []).append(str(case["q"]))
    picked: list[tuple[str, str]] = []
    while len(picked) < n and any(by_family.values()):
        for family, texts in by_family.items():
            if texts and len(picked) < n:
                picked.append((family, texts.pop(0)))
    return picked


def pcb_boards(n: int, deeppcb: Path | None) -> list[str]:
    """The first n DeepPCB validation boards (fixed groups, never trained on); templates lie beside them."""
    from defect_agent.paths import shared_dataset
    from vision.datasets.deeppcb import scan_deeppcb, split_of

    root = deeppcb or shared_dataset("deeppcb")
    if root is None or not Path(root).is_dir():
        raise SystemExit("DeepPCB not found: pass --deeppcb (the folder holding PCBData)")
    return [str(p.test) for p in scan_deeppcb(root) if split_of(p.group) == "val"][:n]


def battery_cells(n: int, seed: int, work: Path) -> list[str]:
    from vision.datasets.synth.battery_tab import generate_batch

    return [str(p) for p in generate_batch(work / "images", n=n, seed=seed)]


@contextmanager
def counting_locate(inspector) -> Iterator[Callable[[], int]]:
    """Wrap the real `inspector.locate` (no model is replaced) for the block; yields a reader of its call count."""
    calls = {"n": 0}
    real = inspector.locate

    def locate(*args: Any, **kwargs: Any):
        calls["n"] += 1
        return real(*args, **kwargs)

    inspector.locate = locate
    try:
        yield lambda: calls["n"]
    finally:
        del inspector.locate  # the class's method again


def _key(verdict) -> tuple[str, str]:
    return verdict.image, verdict.query.instruction


def _comparable(verdict) -> dict:
    return verdict.model_dump(mode="json", exclude={"timings_ms"})


def compare(inspector, instructions: list[str], paths: list[str], lang: str | None = None) -> dict[str, Any]:
    """Shared pass, then one pass per instruction, timed in this process; locator calls counted; verdicts compared."""
    from agent.many import inspect_many, parse_instructions

    queries = parse_instructions(instructions, line=inspector.line.name)
    with counting_locate(inspector) as calls:
        t = time.perf_counter()
        shared = list(inspect_many(inspector, queries, paths, lang=lang))
        shared_s = time.perf_counter() - t
        shared_calls = calls()
        t = time.perf_counter()
        single = [v for q in queries for v in inspector.inspect(q, paths, lang=lang)]
        single_s = time.perf_counter() - t
        single_calls = calls() - shared_calls
    by_key = {_key(v): _comparable(v) for v in single}
    differ = [list(_key(v)) for v in shared if by_key.get(_key(v)) != _comparable(v)]
    pairs = len(paths) * len(queries)
    return {
        "images": len(paths),
        "instructions": len(queries),
        "shared": {
            "wall_s": round(shared_s, 2),
            "locator_calls": shared_calls,
            "verdicts": len(shared),
            "ms_per_image_instruction": round(1000 * shared_s / max(pairs, 1), 1),
        },
        "per_instruction": {
            "wall_s": round(single_s, 2),
            "locator_calls": single_calls,
            "verdicts": len(single),
            "ms_per_image_instruction": round(1000 * single_s / max(pairs, 1), 1),
        },
        "ratio": round(single_s / shared_s, 2) if shared_s > 0 else None,
        "verdicts_identical": not differ and len(shared) == len(single),
        "differing": differ[:10],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", choices=["pcb", "battery_tab"], default="pcb")
    ap.add_argument("--images", type=int, default=20, help="boards (pcb) or generated cells (battery_tab)")
    ap.add_argument("--instructions", type=int, default=10, help="instructions of the query set")
    ap.add_argument("--instruction", "-i", action="append", default=None, help="instead: these instructions")
    ap.add_argument("--deeppcb", type=Path, default=None, help="pcb: DeepPCB folder (default ../shared/datasets)")
    ap.add_argument("--seed", type=int, default=4242, help="battery_tab: generator seed")
    ap.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "many_queries", help="generated cells")
    ap.add_argument("--kb", type=Path, default=None, help="knowledge base folder (default: none)")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/many_queries_<line>.json")
    args = ap.parse_args(argv)

    from defect_agent.runtime import configure_offline

    configure_offline()
    import torch

    from agent.pipeline import Inspector

    picked = (
        [("given", text) for text in args.instruction]
        if args.instruction
        else line_instructions(args.line, args.instructions)
    )
    paths = (
        pcb_boards(args.images, args.deeppcb)
        if args.line == "pcb"
        else battery_cells(args.images, args.seed, args.work)
    )
    load_before = os.getloadavg()
    t = time.perf_counter()
    inspector = Inspector.from_config(line=args.line, kb_dir=args.kb, use_kb=args.kb is not None)
    load_s = time.perf_counter() - t
    inspector.inspect_image(inspector.parse(picked[0][1]), paths[0])  # warm-up, untimed: lazy state of the models
    result = compare(inspector, [text for _, text in picked], paths)
    summary = {
        "benchmark": "bench_many_queries",
        "command": "benchmarks/bench_many_queries.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "line": args.line,
        "kb": args.kb is not None,
        "machine": f"{os.cpu_count()} CPU cores (shared with other jobs), no GPU",
        "threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model_load_s": round(load_s, 2),
        "locator": getattr(inspector.locator, "version", None),
        "instruction_list": [{"family": f, "instruction": text} for f, text in picked],
        **result,
    }
    s, p = result["shared"], result["per_instruction"]
    print(f"{result['images']} images x {result['instructions']} instructions, line {args.line}")
    print(f"{'mode':<16} {'analyses':>9} {'wall s':>8} {'ms / (image, instr.)':>21}")
    print(f"{'shared pass':<16} {s['locator_calls']:9d} {s['wall_s']:8.1f} {s['ms_per_image_instruction']:21.1f}")
    print(f"{'per instruction':<16} {p['locator_calls']:9d} {p['wall_s']:8.1f} {p['ms_per_image_instruction']:21.1f}")
    print(f"ratio per-instruction / shared: {result['ratio']}x; verdicts identical: {result['verdicts_identical']}")
    out = args.out or ROOT / "benchmarks" / "results" / f"many_queries_{args.line}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written {out}")
    return summary


if __name__ == "__main__":
    main()
