"""Few-shot defect naming on DeepPCB validation boards (issue 4 acceptance).

    .venv/bin/python benchmarks/bench_fewshot.py [--deeppcb DIR] [--seeds 5] [--ks 1,5,20]

Queries: DeepPCB validation groups (vision.datasets.deeppcb.VAL_GROUPS), 150 crops per defect class + 300 defect-free
template crops. Support: k per class (6 defects + normal) from the train groups, `--seeds` draws averaged. Methods:
zero-shot prompts, image prototypes only, and their convex mix (weight and prototype scale tuned on the train
part only). Writes benchmarks/results/fewshot.json and fewshot.md and prints the table."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deeppcb", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ks", default="1,5,20")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fewshot.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from defect_agent.config import load_app_config
    from defect_agent.paths import shared_dataset
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    threads = set_threads()
    from vision.embedder import load_embedder
    from vision.embedder.fewshot import run_fewshot

    root = args.deeppcb or shared_dataset("deeppcb")
    if root is None or not Path(root).is_dir():
        print("DeepPCB not found: pass --deeppcb (the folder holding PCBData)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    embedder = load_embedder(load_app_config().embedder)
    result = run_fewshot(embedder, root, ks=tuple(int(k) for k in args.ks.split(",")), seeds=tuple(range(args.seeds)))
    seconds = time.perf_counter() - t0
    payload = {**result.model_dump(), "seconds": round(seconds, 1), "threads": threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    md = args.out.with_suffix(".md")
    md.write_text(
        f"# Few-shot defect naming, DeepPCB validation boards\n\nembedder `{result.embedder}`; queries "
        f"{result.queries}; support drawn from the train part, {len(result.seeds)} seeds; mix tuned on "
        f"train: {result.tuned}\n\n{result.markdown()}\n",
        encoding="utf-8",
    )
    print(result.markdown())
    print(f"tuned on train: {result.tuned}; {seconds:.1f} s; wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
