"""The class verifier (vision/verifier/model.py) behind several pcb locators: each locator's detections on the DeepPCB
validation groups scored as the detector gives them and after the verifier relabels them, in one process, so the
gain is a difference over the same boxes. Locators are full checkpoints (.pt) or LoRA adapters (.safetensors) over
the line's base, e.g. the artifacts of benchmarks/bench_lora.py:

    python benchmarks/bench_verifier.py \\
        --models shipped=models/locator/pcb_adapter.safetensors,full800=var/bench_lora/artifacts/full_ref_nall.pt

and several verifiers behind each, the suffixes switching eight-view TTA and overriding the line's decision rules
(relabel = locator.verifier_relabel_min, union = verifier_union_min, demote = verifier_demote; "none" unsets):

    --verifiers first=var/v1.safetensors:off,shipped=models/locator/pcb_verifier.safetensors:on
    --verifiers old=models/locator/pcb_verifier.safetensors:relabel=0.5:demote=none

Writes benchmarks/results/verifier_pcb.json and .md (or --out)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _locator(line, path: Path):
    from vision.locator.model import Locator

    cfg = line.locator.model_copy(
        update={"adapter": str(path), "weights": line.locator.weights}
        if path.suffix == ".safetensors"
        else {"adapter": None, "weights": str(path)}
    )
    return Locator.from_line(line.model_copy(update={"locator": cfg}))


def deeppcb_source(src: str | None) -> Path:
    """The DeepPCB folder a benchmark reads: `--src`, else ../shared/datasets/deeppcb; exits when it is absent."""
    from defect_agent.paths import shared_dataset

    path = Path(src) if src else shared_dataset("deeppcb")
    if path is None or not path.exists():
        raise SystemExit("DeepPCB not found: pass --src (see ../shared/datasets/README.md)")
    return path


def validation_boards(src: Path, max_boards: int | None = None) -> list[tuple]:
    """(template composite, [(class id, Box)]) for each validation board that has a template."""
    from vision.datasets.deeppcb import parse_annotation, reference_input, template_pairs

    return [
        (
            reference_input(p.test, p.template),
            parse_annotation(p.annotation.read_text(encoding="utf-8"), str(p.annotation)),
        )
        for p in template_pairs(src, "val", max_boards)
    ]


RULES = {"relabel": "verifier_relabel_min", "union": "verifier_union_min", "demote": "verifier_demote"}


def _verifiers(spec: str | None, line) -> list[tuple[str, object]]:
    """(id, DefectVerifier) for each `id=path[:on|off][:rule=value...]` of `spec` (default: the line's verifier,
    TTA and rules)."""
    from defect_agent.paths import resolve
    from vision.verifier.model import DefectVerifier

    if not spec:
        return [("line", DefectVerifier.for_line(line))]
    out = []
    for item in spec.split(","):
        name, _, rest = item.partition("=")
        path, *options = rest.split(":")
        update: dict = {"verifier": str(resolve(path))}
        for option in options:
            if option in ("on", "off"):
                update["verifier_tta"] = option == "on"
                continue
            key, _, value = option.partition("=")
            if key not in RULES:
                raise SystemExit(
                    f"--verifiers {item}: unknown option {option!r} (on, off, "
                    + ", ".join(f"{k}=" for k in RULES)
                    + ")"
                )
            update[RULES[key]] = None if value == "none" else float(value)
        cfg = line.locator.model_copy(update=update)
        out.append((name, DefectVerifier.for_line(line.model_copy(update={"locator": cfg}))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models",
        default="shipped=models/locator/pcb_adapter.safetensors",
        help="comma-separated id=path (a .pt checkpoint or a .safetensors adapter over the line's base)",
    )
    ap.add_argument(
        "--verifiers",
        default=None,
        help="comma-separated id=path[:on|off] (TTA; default the line's), each scored behind every "
        "model (default: the line's verifier)",
    )
    ap.add_argument("--line", default="pcb")
    ap.add_argument("--src", default=None, help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    ap.add_argument("--max-boards", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "verifier_pcb.json"))
    ap.add_argument("--render", action="store_true", help="only rewrite --out's .md table from its .json")
    args = ap.parse_args()
    if args.render:
        summary = json.loads(Path(args.out).read_text(encoding="utf-8"))
        print(write_table(Path(args.out), summary))
        return

    from defect_agent.config import load_line
    from defect_agent.paths import resolve
    from defect_agent.runtime import configure_offline
    from vision.verifier.eval import evaluate_verifier

    configure_offline()
    line = load_line(args.line)
    verifiers = _verifiers(args.verifiers, line)
    src = deeppcb_source(args.src)
    records = []
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        locator = _locator(line, resolve(path))
        for vid, verifier in verifiers:
            started = time.time()
            report = evaluate_verifier(
                locator, verifier, src, "val", conf_operating=line.locator.conf, max_boards=args.max_boards
            )
            records.append(
                {
                    "id": name,
                    "path": path,
                    "verifier_id": vid,
                    "tta": verifier.tta,
                    "relabel_min": verifier.relabel_min,
                    "union_min": verifier.union_min,
                    "demote": verifier.demote,
                    "seconds": round(time.time() - started, 1),
                    **report.model_dump(),
                }
            )
            d, v, m = report.detector, report.verified, report.verified_multilabel
            print(
                f"{name} / {vid}: mAP50 {d.map50:.4f} -> {v.map50:.4f} -> {m.map50:.4f} (+alternatives), "
                f"mAP50-95 {d.map50_95:.4f} -> {v.map50_95:.4f} -> {m.map50_95:.4f}, class accuracy "
                f"{d.class_accuracy:.4f} -> {v.class_accuracy:.4f}, mAP@0.33 {d.map33:.4f} -> {v.map33:.4f} -> "
                f"{m.map33:.4f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmark": "verifier",
        "line": args.line,
        "imgsz": line.locator.imgsz,
        "iou": line.locator.iou,
        "conf": line.locator.conf,
        "host": platform.node(),
        "command": " ".join(sys.argv),
        "records": records,
    }
    out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(write_table(out, summary))


def write_table(out: Path, summary: dict) -> str:
    rows = [
        "| locator | verifier | TTA | relabel / union / demote | mAP50 | + verifier | + alternatives | mAP50-95 | "
        "+ verifier | + alternatives | mAP@0.33 + verifier | class accuracy | + verifier |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["records"]:
        d, v = r["detector"], r["verified"]
        m = r.get("verified_multilabel") or {"map50": float("nan"), "map50_95": float("nan")}
        tta = r.get("tta", summary.get("tta", False))
        rules = " / ".join(
            "" if r.get(k, "?") is None else str(r.get(k, "?")) for k in ("relabel_min", "union_min", "demote")
        )
        map33 = f"{v['map33']:.4f}" if v.get("map33") is not None else ""
        rows.append(
            f"| {r['id']} | {r.get('verifier_id', '')} {r['verifier']} | {tta} | {rules} | {d['map50']:.4f} | "
            f"{v['map50']:.4f} | {m['map50']:.4f} | {d['map50_95']:.4f} | "
            f"{v['map50_95']:.4f} | {m['map50_95']:.4f} | {map33} | {d['class_accuracy']:.4f} | "
            f"{v['class_accuracy']:.4f} |"
        )
    table = "\n".join(rows) + "\n"
    out.with_suffix(".md").write_text(
        f"DeepPCB validation (200 boards); mAP from the pipeline's own detections (Locator.predict at imgsz "
        f"{summary.get('imgsz', 320)}, conf 0.001, NMS IoU {summary.get('iou', 0.5)}); + verifier: its classes and "
        f"(box head) refined boxes, ranked by the geometric mean of detector confidence and verifier probability "
        f"(records without a verifier_multilabel column were written before that ranking and rank by detector "
        f"confidence); + alternatives: each other class the verifier gives >= 0.05 as one more detection (the "
        f"multi-label reading ultralytics' validator scores); ultralytics val (`eval locator`, bench_lora.py) "
        f"runs the same weights through its own batching and letterbox and can differ; class accuracy = "
        f"detections at conf {summary.get('conf', 0.25)} on a defect (IoU >= 0.5) with its class; mAP@0.33: DeepPCB's "
        f"own protocol (right at IoU > 0.33), where the dataset paper's 0.986 stands; relabel / union / demote: the "
        f"verifier's decision rules (? where a record predates the column; demote: merged boxes kept low in the "
        f"ranked list).\n\n" + table,
        encoding="utf-8",
    )
    return table


if __name__ == "__main__":
    main()
