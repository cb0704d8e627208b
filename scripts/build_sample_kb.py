"""Build the sample knowledge base that ships with the demo: defect crops from generated battery_tab images
(seeds disjoint from training, evaluation and the demo) with engineer-style reports.

    .venv/bin/python scripts/build_sample_kb.py   # writes knowledge_base/sample_data/battery_tab/
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2

from vision.crops import crop_region
from vision.datasets.synth.battery_tab import generate_battery_tab

OUT = Path(__file__).resolve().parent.parent / "knowledge_base" / "sample_data" / "battery_tab"
SEED_BASE = 90_000
PER_CLASS = 8
MAX_SIDE = 256

REPORTS = {
    "spatter": [
        (
            "rework",
            "Weld spatter beads beside the nugget; beads loose, risk of internal short.",
            "Oxide film and oil on the tab surface raised the weld energy needed.",
            "Clean tabs with IPA before welding; cut amplitude 5 %.",
        ),
        (
            "scrap",
            "Heavy spatter across the tab edge, beads fused to the separator side.",
            "Weld energy far above window after horn change.",
            "Re-qualify weld window after every horn change.",
        ),
        (
            "accept",
            "Two small fused spatter beads, firmly attached, outside the keep-out zone.",
            "Normal process variation.",
            "None; monitor spatter rate per shift.",
        ),
    ],
    "crack": [
        (
            "scrap",
            "Crack across the tab root next to the weld zone.",
            "Horn pressure too high, tab fatigued.",
            "Reduce clamp pressure; replace worn anvil.",
        ),
        (
            "scrap",
            "Hairline crack along the tab fold.",
            "Tab bent twice during stacking.",
            "Add fold-radius guide on stacker.",
        ),
    ],
    "burn": [
        (
            "scrap",
            "Dark burn mark with discoloured rim on the tab.",
            "Laser power spike, protective glass dirty.",
            "Clean protective glass; add power monitor alarm.",
        ),
        (
            "rework",
            "Light scorch beside the weld, no melt-through.",
            "Focus drift on weld head 2.",
            "Re-focus head 2; check daily.",
        ),
    ],
    "weld_offset": [
        (
            "rework",
            "Weld nugget shifted off the tab centre.",
            "Fixture locating pin worn; tab position drifts.",
            "Replace locating pin; re-teach weld position.",
        ),
        (
            "scrap",
            "Weld nugget off-centre, nugget edge on the tab edge.",
            "Vision alignment offset not updated after changeover.",
            "Update alignment offset at every changeover; add first-article check.",
        ),
    ],
    "missing_weld": [
        (
            "scrap",
            "No weld nugget on the tab.",
            "Weld head did not fire: trigger sensor dirty.",
            "Clean trigger sensor; interlock on missed weld.",
        ),
    ],
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    rng = random.Random(7)
    counts = {k: 0 for k in REPORTS}
    rows = []
    seed = SEED_BASE
    while min(counts.values()) < PER_CLASS and seed < SEED_BASE + 5000:
        image, truth = generate_battery_tab(seed)
        seed += 1
        candidates = [(o.name, o.box) for o in truth.objects if o.name in ("spatter", "crack", "burn")]
        if truth.offset_mm is not None and truth.offset_mm > 0.3 and truth.boxes("weld"):
            candidates.append(("weld_offset", truth.boxes("weld")[0]))
        if truth.missing_weld and truth.boxes("tab"):
            candidates.append(("missing_weld", truth.boxes("tab")[0]))
        for cls, box in candidates:
            if counts[cls] >= PER_CLASS:
                continue
            counts[cls] += 1
            disposition, report, cause, action = rng.choice(REPORTS[cls])
            name = f"{cls}_{counts[cls]:02d}.png"
            crop = crop_region(image, box)
            scale = MAX_SIDE / max(crop.shape[:2])
            if scale < 1.0:  # the embedder sees 224 px anyway; keeps the shipped sample small
                crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(OUT / name), crop)
            measurements = {"offset_mm": round(truth.offset_mm, 3)} if cls == "weld_offset" else {}
            rows.append(
                {
                    "line": "battery_tab",
                    "defect_class": cls,
                    "image_path": name,
                    "report": report,
                    "disposition": disposition,
                    "root_cause": cause,
                    "corrective_action": action,
                    "author": "qe.sample",
                    "measurements": measurements,
                }
            )
    (OUT / "cases.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(rows)} cases to {OUT}: {counts}")


if __name__ == "__main__":
    main()
