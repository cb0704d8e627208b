"""The batch's reports, rebuilt from its results file in one streaming pass (memory flat in the number of images):
`verdicts.csv` (one row per image and instruction) and a self-contained `report.html` (counts per part verdict and
class, the instructions' answers, defect-size histograms, the worst images with overlays, the trend over the runs
kept in the folder)."""

from __future__ import annotations

import base64
import csv
import heapq
import html
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.batch.ledger import BatchRecord, read_records
from agent.batch.profile import BatchProfile
from agent.messages import class_label, pick_lang, say, shown_measurements
from agent.report import deciding_clause

HIST_BINS = {"offset_mm": 0.05, "length_mm": 0.25}  # the sizes tolerances are written in
SEVERITY = {"fail": 2, "review": 1, "pass": 0}


class BatchTotals(BaseModel):
    """Everything in a results folder, image by image (each image counted once whatever the instructions)."""

    images: int
    verdicts: dict[str, int]
    unreadable: int
    matches: dict[str, int]
    classes: dict[str, int]

    @property
    def exit_code(self) -> int:
        """0 no part failed, 1 a part failed, 3 some images could not be read (and none failed)."""
        if self.verdicts.get("fail", 0):
            return 1
        return 3 if self.unreadable else 0


def _severity(record: BatchRecord) -> tuple[int, float]:
    v = record.verdict
    worst = max((d.probability for d in v.defects if d.verdict != "pass"), default=0.0)
    return SEVERITY[v.verdict], worst


def _svg_histogram(values: Counter[float], step: float, unit: str) -> str:
    if not values:
        return ""
    keys = sorted(values)
    lo, hi = keys[0], keys[-1]
    bins = [round(lo + i * step, 6) for i in range(int(round((hi - lo) / step)) + 1)]
    peak = max(values.values())
    width, height, bar = 24 * len(bins), 120, 22
    parts = [f'<svg width="{width + 10}" height="{height + 30}" role="img">']
    for i, b in enumerate(bins):
        h = int(height * values.get(b, 0) / peak)
        parts.append(
            f'<rect x="{i * 24 + 5}" y="{height - h}" width="{bar}" height="{h}" fill="#4a6fa5">'
            f"<title>{b:g}-{b + step:g} {unit}: {values.get(b, 0)}</title></rect>"
        )
        if i % max(1, len(bins) // 8) == 0:
            parts.append(f'<text x="{i * 24 + 5}" y="{height + 14}" font-size="10">{b:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _overlay_png(record: BatchRecord, lang: str) -> str | None:
    from agent.images import read_image
    from agent.overlay import draw_overlay
    from defect_agent.config import load_line
    from defect_agent.errors import DefectAgentError

    try:
        image = read_image(record.verdict.image)
        canvas = draw_overlay(image, record.verdict, load_line(record.verdict.line), lang)
    except DefectAgentError:
        return None
    import cv2

    scale = min(1.0, 480 / max(canvas.shape[:2]))
    if scale < 1.0:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", canvas)
    return base64.b64encode(data.tobytes()).decode() if ok else None


def write_reports(out_dir: Path, profile: BatchProfile) -> BatchTotals:
    """Rewrite verdicts.csv and report.html from verdicts.jsonl; returns the folder's totals."""
    from defect_agent.config import load_line

    lang = pick_lang(profile.lang or "en")
    line = load_line(profile.line)
    seen: set[str] = set()
    verdicts: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    matches: Counter[str] = Counter()
    uncertain: Counter[str] = Counter()
    histograms: dict[str, Counter[float]] = defaultdict(Counter)
    unreadable = 0
    worst: list[tuple[tuple[int, float], int, BatchRecord]] = []
    n = 0
    with (out_dir / "verdicts.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "image",
                "instruction",
                "verdict",
                "matches_query",
                "match_uncertain",
                "score",
                "defects",
                "why",
                "deciding_clause",
                "error",
            ]
        )
        for record in read_records(out_dir / "verdicts.jsonl"):
            n += 1
            v = record.verdict
            matches[record.instruction_id] += v.matches_query
            uncertain[record.instruction_id] += v.match_uncertain
            real = [d for d in v.defects if d.probability >= 0.5 and d.verdict != "pass"]
            writer.writerow(
                [
                    v.image,
                    record.instruction_id,
                    v.verdict,
                    v.matches_query,
                    v.match_uncertain,
                    f"{v.score:.3f}",
                    ";".join(sorted({d.defect_class for d in real})),
                    (v.verdict_reasons or [""])[0],
                    deciding_clause(v, lang),
                    v.error or "",
                ]
            )
            image_key = record.image_sha256 or v.image
            if image_key in seen:
                continue
            seen.add(image_key)
            verdicts[v.verdict] += 1
            unreadable += bool(v.error)
            for d in real:
                classes[d.defect_class] += 1
                for key, value in shown_measurements(d.measurements).items():
                    if key not in HIST_BINS:
                        continue
                    step = HIST_BINS[key]
                    histograms[f"{d.defect_class}:{key}"][round(step * (value // step), 6)] += 1
            if profile.worst and v.verdict != "pass" and not v.error:
                item = (_severity(record), n, record)
                if len(worst) < profile.worst:
                    heapq.heappush(worst, item)
                else:
                    heapq.heappushpop(worst, item)
    totals = BatchTotals(
        images=len(seen),
        verdicts={k: verdicts.get(k, 0) for k in ("fail", "review", "pass")},
        unreadable=unreadable,
        matches=dict(matches),
        classes=dict(classes),
    )
    runs = sorted(
        (json.loads(p.read_text(encoding="utf-8")) for p in (out_dir / "runs").glob("*.json")),
        key=lambda r: r.get("started", ""),
    )
    (out_dir / "report.html").write_text(
        _html(profile, line, lang, totals, uncertain, histograms, sorted(worst, reverse=True), runs), encoding="utf-8"
    )
    return totals


def _html(
    profile: BatchProfile,
    line: Any,
    lang: str,
    totals: BatchTotals,
    uncertain: Counter[str],
    histograms: dict[str, Counter[float]],
    worst: list[tuple[tuple[int, float], int, BatchRecord]],
    runs: list[dict[str, Any]],
) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(i.id)}</td><td>{e(i.text)}</td><td>{totals.matches.get(i.id, 0)}</td>"
        f"<td>{uncertain.get(i.id, 0)}</td></tr>"
        for i in profile.instructions
    )
    class_rows = "".join(
        f"<tr><td>{e(class_label(c, line, lang))}</td><td>{k}</td></tr>"
        for c, k in sorted(totals.classes.items(), key=lambda t: -t[1])
    )
    hists = "".join(
        f"<figure><figcaption>{e(class_label(name.split(':')[0], line, lang))} — {e(name.split(':')[1])}</figcaption>"
        f"{_svg_histogram(values, HIST_BINS[name.split(':')[1]], 'mm')}</figure>"
        for name, values in sorted(histograms.items())
    )
    cards = []
    for (_sev, _p), _n, record in worst:
        png = _overlay_png(record, lang)
        v = record.verdict
        reasons = "".join(f"<li>{e(r)}</li>" for r in v.verdict_reasons[:3])
        img = f'<img src="data:image/png;base64,{png}" alt="">' if png else ""
        cards.append(
            f"<div class='card'>{img}<p><b>{e(Path(v.image).name)}</b> {e(v.verdict)}</p><ul>{reasons}</ul></div>"
        )
    trend = "".join(
        f"<tr><td>{e(r['run_id'])}</td><td>{r['images']}</td><td>{r['inspected']}</td><td>{r['skipped']}</td>"
        f"<td>{r['verdicts'].get('fail', 0)}</td><td>{r['verdicts'].get('review', 0)}</td>"
        f"<td>{r['verdicts'].get('pass', 0)}</td><td>{r['unreadable']}</td><td>{r['seconds']}</td></tr>"
        for r in runs
    )
    counts = totals.verdicts
    title = f"{e(profile.name)} — {e(profile.line)}"
    return f"""<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,"WenQuanYi Micro Hei",sans-serif;margin:1.5rem;color:#1d2330}}
table{{border-collapse:collapse;margin:.5rem 0}}td,th{{border-bottom:1px solid #dde;padding:.25rem .6rem;text-align:left}}
.counts span{{display:inline-block;padding:.4rem .8rem;margin-right:.5rem;border-radius:4px;color:#fff;font-weight:600}}
.fail{{background:#c62828}}.review{{background:#e69500}}.pass{{background:#2e7d32}}.bad{{background:#555}}
.cards{{display:flex;flex-wrap:wrap;gap:1rem}}.card{{width:480px}}.card img{{max-width:100%}}figure{{display:inline-block}}
</style></head><body>
<h1>{title}</h1>
<p class="counts"><span class="fail">{say("verdict_fail", lang)} {counts["fail"]}</span><span class="review">{say("verdict_review", lang)} {counts["review"]}</span><span class="pass">{say("verdict_pass", lang)} {counts["pass"]}</span><span class="bad">unreadable {totals.unreadable}</span> of {totals.images} images</p>
<h2>Instructions</h2><table><tr><th>id</th><th>instruction</th><th>matching images</th><th>uncertain</th></tr>{rows}</table>
<h2>Defects by class</h2><table><tr><th>class</th><th>findings</th></tr>{class_rows}</table>
<h2>Defect sizes</h2>{hists or "<p>no measured defects</p>"}
<h2>Worst images</h2><div class="cards">{"".join(cards) or "<p>none</p>"}</div>
<h2>Runs in this folder</h2><table><tr><th>run</th><th>images</th><th>inspected</th><th>skipped</th><th>fail</th><th>review</th><th>pass</th><th>unreadable</th><th>seconds</th></tr>{trend}</table>
</body></html>"""
