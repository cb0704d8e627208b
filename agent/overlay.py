"""Annotated overlay images an operator can read at a glance: a banner with the part's verdict and, separately, the
instruction's answer; each finding boxed in the colour of what it does to the part, labelled in the operator's
language without labels covering each other; findings below the reporting threshold drawn faint and unlabelled;
a legend of the colours."""

from __future__ import annotations

import logging
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.messages import class_label, measurement_text, pick_lang, say, shown_measurements
from agent.verdict import DefectFinding, Verdict
from defect_agent.config import LineConfig

log = logging.getLogger(__name__)

# RGB: what a finding does to the part
COLOURS = {"fail": (220, 40, 40), "review": (240, 170, 0), "pass": (60, 170, 60), "faint": (150, 150, 150)}
REPORT_MIN = 0.35  # findings below this fused probability are drawn faint (the review band's lower edge)
_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


@lru_cache(maxsize=4)
def font_file(lang: str) -> str | None:
    """A TrueType font that can write `lang`: a CJK font for zh (Debian's fonts-wqy-microhei, or any fontconfig
    finds), DejaVu Sans (shipped with matplotlib) for en; None when there is none."""
    if pick_lang(lang) == "zh":
        for path in _CJK_FONTS:
            if Path(path).is_file():
                return path
        if shutil.which("fc-match"):
            try:
                out = subprocess.run(
                    ["fc-match", "-f", "%{file}", ":lang=zh"], capture_output=True, text=True, timeout=5
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                out = ""
            if out and Path(out).is_file() and "DejaVu" not in out:
                return out
        return None
    try:
        import matplotlib

        dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return str(dejavu) if dejavu.is_file() else None
    except ImportError:
        return None


def overlay_lang(lang: str) -> str:
    """The language labels can be written in here: zh needs a CJK font (else English, with a warning once)."""
    lang = pick_lang(lang)
    if lang == "zh" and font_file("zh") is None:
        _warn_no_cjk_font()
        return "en"
    return lang


@lru_cache(maxsize=1)
def _warn_no_cjk_font() -> None:
    log.warning("no CJK font found (install Debian's fonts-wqy-microhei): overlay labels are written in English")


@lru_cache(maxsize=8)
def _font(lang: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_file(lang)
    return ImageFont.truetype(path, size) if path else ImageFont.load_default()


def _label(finding: DefectFinding, line: LineConfig | None, lang: str) -> str:
    name = class_label(finding.defect_class, line, lang)
    shown = [
        measurement_text(k, v, lang) for k, v in shown_measurements(finding.measurements).items() if k != "area_mm2"
    ][:1]
    return " ".join([name, f"{finding.probability:.2f}", *shown])


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _place(
    size: tuple[float, float],
    box: tuple[int, int, int, int],
    canvas: tuple[int, int],
    taken: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    """A free spot for a label of `size`: above the box, else below it, else stepping down; never off the image."""
    w, h = size
    width, height = canvas
    x = min(max(box[0], 0), max(width - w, 0))
    candidates = [box[1] - h - 2, box[3] + 2] + [box[3] + 2 + k * (h + 2) for k in range(1, 40)]
    for y in candidates:
        y = min(max(y, 24), max(height - h, 0))
        rect = (x, y, x + w, y + h)
        if not any(_overlaps(rect, r) for r in taken):
            return rect
    y = min(max(box[1], 24), max(height - h, 0))  # nowhere free: over the box's top edge
    return (x, y, x + w, y + h)


def draw_overlay(image: np.ndarray, verdict: Verdict, line: LineConfig | None = None, lang: str = "en") -> np.ndarray:
    """The annotated BGR image of a verdict (labels in `lang` where a font for it exists)."""
    lang = overlay_lang(lang)
    rgb = cv2.cvtColor(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2RGB)
    legend_h = 22
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + legend_h), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(lang, 13)
    width, height = rgb.shape[1], rgb.shape[0]
    taken: list[tuple[float, float, float, float]] = [(0, 0, width, 22)]  # the banner
    ordered = sorted(verdict.defects, key=lambda f: ({"fail": 0, "review": 1, "pass": 2}[f.verdict], -f.probability))
    for finding in ordered:
        b = finding.box
        box = (int(b.x1), int(b.y1), int(b.x2), int(b.y2))
        if finding.probability < REPORT_MIN:
            draw.rectangle(box, outline=COLOURS["faint"], width=1)
            continue
        colour = COLOURS[finding.verdict]
        draw.rectangle(box, outline=colour, width=3 if finding.matched_clauses else 2)
        text = _label(finding, line, lang)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        rect = _place((right - left + 6, bottom - top + 4), box, (width, height), taken)
        taken.append(rect)
        draw.rectangle(rect, fill=colour)
        draw.text((rect[0] + 3, rect[1] + 2 - top), text, font=font, fill=(255, 255, 255))
    # banner: the part's verdict and, separately, the instruction's answer
    draw.rectangle((0, 0, width, 22), fill=(0, 0, 0))
    part = f"{say('col_verdict', lang)}: {say('verdict_' + verdict.verdict, lang).upper()}"
    draw.text((6, 3), part, font=_font(lang, 14), fill=COLOURS[verdict.verdict])
    answer = say("match_yes" if verdict.matches_query else "match_no", lang) + ("?" if verdict.match_uncertain else "")
    query = f"{say('col_match', lang)}: {answer} ({verdict.score:.2f})"
    qw = draw.textbbox((0, 0), query, font=_font(lang, 14))[2]
    draw.text((max(width - qw - 6, width // 2), 3), query, font=_font(lang, 14), fill=(230, 230, 230))
    # legend
    x: float = 6
    for key, legend_colour in (
        ("legend_fail", "fail"),
        ("legend_review", "review"),
        ("legend_pass", "pass"),
        ("legend_faint", "faint"),
    ):
        draw.rectangle((x, height + 6, x + 12, height + 16), fill=COLOURS[legend_colour])
        text = say(key, lang)
        draw.text((x + 16, height + 4), text, font=_font(lang, 12), fill=(230, 230, 230))
        x += 16 + draw.textbbox((0, 0), text, font=_font(lang, 12))[2] + 14
    return cv2.cvtColor(np.asarray(canvas), cv2.COLOR_RGB2BGR)


def write_overlay(
    image: np.ndarray, verdict: Verdict, out_dir: Path, lang: str | None = None, tag: str | None = None
) -> Path:
    """Write `<image stem>_overlay.png` into `out_dir` (labels in `lang`, default the instruction's language);
    `tag` (one of several instructions over the image, e.g. `q2`): `<image stem>_q2_overlay.png`."""
    from defect_agent.config import load_line
    from defect_agent.errors import DefectAgentError

    try:
        line: LineConfig | None = load_line(verdict.line)
    except DefectAgentError:
        line = None
    lang = pick_lang(lang or (verdict.query.language if verdict.query else None))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (Path(verdict.image).stem + (f"_{tag}" if tag else "") + "_overlay.png")
    ok, data = cv2.imencode(".png", draw_overlay(image, verdict, line, lang))
    if not ok:
        raise OSError(f"could not encode overlay for {verdict.image}")
    target.write_bytes(data.tobytes())
    return target
