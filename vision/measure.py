"""Measurements in millimetres from the locator's boxes, refined on the image with opencv.

Per detected defect (role `defect` in the line config):
  length_mm / width_mm  - the longer / shorter side of the detector box;
  area_mm2              - the box area: the same definition as the exact ground truth (agent.groundtruth), so an
                          area bound in a query means the same thing in a verdict and in its evaluation;
  blob_area_mm2         - only when the segmentation is trustworthy: the defect's own pixels inside the box (those
                          that differ from the median of a ring around the box, Otsu threshold; kept when they
                          cover 3-95 % of the box, the split explains >= 60 % of the box's variance and the blob
                          differs from the ring by >= 10 grey levels; not for thin lines under 4 px mean width,
                          which the optics' blur widens).

Derived defects (`derived` in the line config):
  rule `offset` (parts [inner, outer], e.g. weld in tab): offset_mm = distance between the inner part's centre and
    the outer part's centre, both refined inside the detector boxes so that a few pixels of box error do not show:
    the outer part's four edges are fitted as straight lines on gradient peaks (sub-pixel, outlier-robust), its
    centre is the mean of the four corners; the inner part is located on a map of local texture energy (|Laplacian|
    relative to the local brightness) whose row / column profiles are cut at half height; the centre is the midpoint
    of the cuts. Both fall back to the box centre when a fit is not trustworthy (`refined` = 0.0). Always reported
    when both parts are found, with `present` = offset_mm > tolerance_mm.
  rule `absent`: the outer part was located and no inner part has its centre inside it.

Parts themselves (role `part`) are never returned as findings."""

from __future__ import annotations

import logging
import math
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field

from defect_agent.config import DerivedDefect, LineConfig
from vision.detection import Box, Detection

log = logging.getLogger(__name__)

INNER_AGREEMENT_PX = 1.5  # sharp and robust weld fits further apart than this: take the robust one
MIN_EDGE_SUPPORT = 0.1  # share of a side's pixel lines that must agree on its edge line
MIN_BLOB_MEAN_WIDTH_PX = 4.0  # thinner blobs (cracks) get no segmented area
MIN_BLOB_CONTRAST = 10.0  # grey levels between a segmented blob and its surroundings; below it, camera noise


class Measured(BaseModel):
    """A defect finding with its measurements; the input of fusion (agent.pipeline)."""

    defect_class: str
    box: Box
    source: Literal["detector", "derived", "anomaly"] = "detector"  # anomaly: a region of the anomaly map
    confidence: float = Field(ge=0.0, le=1.0)
    measurements: dict[str, float] = Field(default_factory=dict)  # offset_mm, length_mm, width_mm, area_mm2, ...
    verifier_score: float | None = None  # carried from the Detection (vision.verifier.model)
    detector_class: str | None = None
    alternatives: dict[str, float] = Field(default_factory=dict)
    present: bool = True  # derived offset: above the line's tolerance; everything else: True


class EdgeFit(BaseModel):
    """A part's outline fitted as four straight edges (continuous pixel coordinates)."""

    center: tuple[float, float]
    angle_deg: float  # rotation of the part's edges from the image axes
    size: tuple[float, float]  # (width, height) between opposite edges
    corners: list[tuple[float, float]]
    inlier_fraction: float  # the worst side's share of its lines whose edge point lies on the fitted line


class OffsetMeasurement(BaseModel):
    """The offset of an inner part's centre (weld) from its outer part's (tab), in pixels and mm, and which
    centres the edge fit refined."""

    inner_center: tuple[float, float]
    outer_center: tuple[float, float]
    offset_px: float
    offset_mm: float
    dx_mm: float
    dy_mm: float
    inner_refined: bool
    outer_refined: bool


# -------------------------------------------------------------------------------------------------------- helpers


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _robust_line(t: np.ndarray, s: np.ndarray, iters: int = 6) -> tuple[float, float, float] | None:
    """Fit s = a*t + b, dropping points beyond 3 robust sigmas; returns (a, b, inlier fraction)."""
    if len(t) < 8:
        return None
    keep = np.ones(len(t), bool)
    a = b = 0.0
    for _ in range(iters):
        if keep.sum() < 6:
            return None
        a, b = np.polyfit(t[keep], s[keep], 1)
        r = s - (a * t + b)
        mad = np.median(np.abs(r[keep] - np.median(r[keep])))
        new_keep = np.abs(r) < max(3.0 * 1.4826 * mad, 0.75)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return float(a), float(b), float(keep.mean())


def _subpixel_peaks(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of g: the column of the maximum with parabolic sub-pixel refinement, and the peak value."""
    k = np.argmax(g, axis=1)
    n = g.shape[1]
    rows = np.arange(g.shape[0])
    kc = np.clip(k, 1, n - 2)
    gm, g0, gp = g[rows, kc - 1], g[rows, kc], g[rows, kc + 1]
    den = gm - 2 * g0 + gp
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(np.abs(den) > 1e-6, 0.5 * (gm - gp) / den, 0.0)
    delta = np.clip(delta, -0.5, 0.5)
    pos = np.where((k > 0) & (k < n - 1), kc + delta, k.astype(np.float64))
    return pos, g[rows, k]


def _edge_points(
    grad: np.ndarray, lo: int, hi: int, a: int, b: int, axis: int, sign: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge positions along `axis` (1: along rows, one per row; 0: along columns, one per column) inside the search
    window [a, b), for the lines lo..hi: where `sign * gradient` peaks. Continuous pixel coordinates
    (line coords, edge coords) and the peak strengths."""
    win = grad[lo:hi, a:b] if axis == 1 else grad[a:b, lo:hi].T
    if win.size == 0 or win.shape[1] < 3:
        return np.empty(0), np.empty(0), np.empty(0)
    pos, peak = _subpixel_peaks(sign * win)
    lines = np.arange(lo, hi, dtype=np.float64) + 0.5
    return lines, pos + a + 0.5, peak


def _fit_sides(
    sides: list[tuple[np.ndarray, np.ndarray]], n_lines: list[int]
) -> list[tuple[float, float, float]] | None:
    """Robust lines for the four sides (left, right, top, bottom). A side with too few points of its own (mostly
    hidden) takes the slope of the opposite side and only its offset from its points. Each fit carries its support:
    the share of the side's lines whose edge point lies on the line."""
    fits: list[tuple[float, float, float] | None] = []
    for (t, e), n in zip(sides, n_lines):
        fit = _robust_line(t, e) if len(t) >= max(8, 0.4 * n) else None
        fits.append(None if fit is None else (fit[0], fit[1], fit[2] * len(t) / max(n, 1)))
    for i, opposite in ((0, 1), (1, 0), (2, 3), (3, 2)):
        if fits[i] is not None:
            continue
        t, e = sides[i]
        opposite_fit = fits[opposite]
        if opposite_fit is None or len(t) < 4:
            return None
        slope = opposite_fit[0]
        r = e - slope * t
        keep = np.ones(len(r), bool)
        for _ in range(4):  # trimmed median offset
            b = float(np.median(r[keep]))
            keep = np.abs(r - b) < max(3.0 * 1.4826 * float(np.median(np.abs(r[keep] - b))), 0.75)
        fits[i] = (slope, float(np.median(r[keep])), float(keep.sum()) / max(n_lines[i], 1))
    return fits  # type: ignore[return-value]


def fit_part_edges(
    gray: np.ndarray, box: Box, search_px: float | None = None, smooth_sigma: float = 1.0
) -> EdgeFit | None:
    """Fit a roughly rectangular region (a tab on its pad, a weld in its tab) by its four edges near the sides of
    `box`: per line of pixels the sub-pixel gradient peak, then a robust straight line per side. Whether the
    region is brighter or darker than its surroundings is read from the image. `smooth_sigma` should wash out
    texture finer than the region (a weld's knurl). None when it fails."""
    h_img, w_img = gray.shape
    bw, bh = box.width, box.height
    if bw < 12 or bh < 12:
        return None
    # how far an edge may sit from the box side: detector error plus the inset of a few degrees of rotation
    s_out = search_px if search_px is not None else 10.0
    s_in_x = (search_px if search_px is not None else 12.0) + 0.07 * bh
    s_in_y = (search_px if search_px is not None else 12.0) + 0.07 * bw
    pad = int(max(s_out, s_in_x, s_in_y)) + 3
    x0, y0 = max(0, int(box.x1) - pad), max(0, int(box.y1) - pad)
    x1, y1 = min(w_img, int(math.ceil(box.x2)) + pad), min(h_img, int(math.ceil(box.y2)) + pad)
    roi = cv2.GaussianBlur(gray[y0:y1, x0:x1], (0, 0), smooth_sigma)
    gx = cv2.Sobel(roi, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(roi, cv2.CV_32F, 0, 1, ksize=3)
    bx1, by1, bx2, by2 = box.x1 - x0, box.y1 - y0, box.x2 - x0, box.y2 - y0
    r_lo, r_hi = int(by1 + 0.15 * bh), int(by2 - 0.15 * bh)  # stay clear of rounded corners
    c_lo, c_hi = int(bx1 + 0.15 * bw), int(bx2 - 0.15 * bw)

    def clamp(v: float, n: int) -> int:
        return int(min(max(v, 0), n))

    W, H = roi.shape[1], roi.shape[0]
    windows = [  # (gradient, line range, search window along the gradient, inward direction)
        (gx, r_lo, r_hi, clamp(bx1 - s_out, W), clamp(bx1 + s_in_x, W), 1, 1.0),
        (gx, r_lo, r_hi, clamp(bx2 - s_in_x, W), clamp(bx2 + s_out, W), 1, -1.0),
        (gy, c_lo, c_hi, clamp(by1 - s_out, H), clamp(by1 + s_in_y, H), 0, 1.0),
        (gy, c_lo, c_hi, clamp(by2 - s_in_y, H), clamp(by2 + s_out, H), 0, -1.0),
    ]
    # polarity from the edges themselves (the box's inside may hold a darker sub-part, e.g. the weld in a tab):
    # brighter inside when the inward gradient peaks are the stronger ones
    votes = 0.0
    for grad, lo, hi, a, b, axis, inward in windows:
        win = grad[lo:hi, a:b] if axis == 1 else grad[a:b, lo:hi].T
        if win.size == 0:
            return None
        votes += float(np.median((inward * win).max(axis=1)) - np.median((-inward * win).max(axis=1)))
    sgn = 1.0 if votes >= 0 else -1.0
    peaks = [_edge_points(grad, lo, hi, a, b, axis, sgn * inward) for grad, lo, hi, a, b, axis, inward in windows]
    # a burn or a bead lying on an edge shows its own outline there: drop points whose inside does not look like
    # the region's inside along the other edges (the level a few px inward, median over all four sides), or whose
    # outside differs from the rest of that side
    d = 2.5 * smooth_sigma + 2.0

    def sample(t: np.ndarray, e: np.ndarray, axis: int, shift: float) -> np.ndarray:
        xs, ys = (e + shift, t) if axis == 1 else (t, e + shift)
        xi = np.clip(np.round(xs - 0.5).astype(int), 0, W - 1)
        yi = np.clip(np.round(ys - 0.5).astype(int), 0, H - 1)
        return roi[yi, xi]

    # the region's true outline is about equally strong all round; weaker peaks on a side are texture or clutter
    # standing in for an edge hidden there
    strength = float(np.median(np.concatenate([pk for _, _, pk in peaks])))
    sides = [(t[pk > 0.5 * strength], e[pk > 0.5 * strength]) for t, e, pk in peaks]
    inside = [sample(t, e, w_[5], w_[6] * d) for (t, e), w_ in zip(sides, windows)]
    outside = [sample(t, e, w_[5], -w_[6] * d) for (t, e), w_ in zip(sides, windows)]
    all_in = np.concatenate(inside)
    if all_in.size < 16:
        return None
    level = float(np.median(all_in))
    tol = max(0.35 * abs(level - float(np.median(np.concatenate(outside)))), 6.0)
    kept = []
    for (t, e), vals_in, vals_out in zip(sides, inside, outside):
        # outside: compared within the side (a shadow or a neighbouring part may make one side's outside differ)
        ok = np.abs(vals_in - level) < tol
        if vals_out.size:
            ok &= np.abs(vals_out - float(np.median(vals_out))) < tol
        kept.append((t[ok], e[ok]))
    n_lines = [r_hi - r_lo, r_hi - r_lo, c_hi - c_lo, c_hi - c_lo]
    fits = _fit_sides(kept, n_lines)
    if fits is None:
        return None
    (al, bl, il), (ar, br, ir), (at, bt_, it), (ab, bb, ib) = fits  # x = a*y + b (left, right); y = a*x + b

    def corner(a_v: float, b_v: float, a_h: float, b_h: float) -> tuple[float, float]:
        x = (a_v * b_h + b_v) / (1.0 - a_v * a_h)
        return x + x0, a_h * x + b_h + y0

    corners = [corner(al, bl, at, bt_), corner(ar, br, at, bt_), corner(ar, br, ab, bb), corner(al, bl, ab, bb)]
    cx = sum(c[0] for c in corners) / 4.0
    cy = sum(c[1] for c in corners) / 4.0
    width = (math.dist(corners[0], corners[1]) + math.dist(corners[3], corners[2])) / 2.0
    height = (math.dist(corners[0], corners[3]) + math.dist(corners[1], corners[2])) / 2.0
    angle = math.degrees((math.atan(at) + math.atan(ab) - math.atan(al) - math.atan(ar)) / 4.0)
    return EdgeFit(
        center=(cx, cy), angle_deg=angle, size=(width, height), corners=corners, inlier_fraction=min(il, ir, it, ib)
    )


def measure_offset(image: np.ndarray, inner_box: Box, outer_box: Box, mm_per_px: float) -> OffsetMeasurement:
    """Offset between the centre of an inner part (weld) and of the outer part (tab) holding it, refined on the
    image; box centres where a refinement fails."""
    gray = to_gray(image)
    outer_c, outer_ok = _refined_center(gray, outer_box, (1.0,))
    # the inner part (a weld) carries texture finer than itself (a knurl). Light smoothing keeps its edges sharpest
    # but may lock onto the texture; heavy smoothing is robust but shifts edges by the texture's shading. Trust the
    # sharp fit when both agree, the robust one otherwise.
    short = min(inner_box.width, inner_box.height)
    sharp_c, sharp_ok = _refined_center(gray, inner_box, (max(1.2, 0.011 * short),))
    robust_c, robust_ok = _refined_center(gray, inner_box, (max(2.5, 0.023 * short), max(5.0, 0.046 * short)))
    if sharp_ok and (not robust_ok or math.dist(sharp_c, robust_c) <= INNER_AGREEMENT_PX):
        inner_c, inner_ok = sharp_c, True
    else:
        inner_c, inner_ok = robust_c, robust_ok
    dx, dy = inner_c[0] - outer_c[0], inner_c[1] - outer_c[1]
    off = math.hypot(dx, dy)
    return OffsetMeasurement(
        inner_center=inner_c,
        outer_center=outer_c,
        offset_px=off,
        offset_mm=off * mm_per_px,
        dx_mm=dx * mm_per_px,
        dy_mm=dy * mm_per_px,
        inner_refined=inner_ok,
        outer_refined=outer_ok,
    )


def _refined_center(gray: np.ndarray, box: Box, sigmas: tuple[float, ...]) -> tuple[tuple[float, float], bool]:
    """Centre from the edge fit (trying each smoothing in turn), or the box centre when no fit is trustworthy."""
    for sigma in sigmas:
        fit = fit_part_edges(gray, box, smooth_sigma=sigma)
        if fit is not None and fit.inlier_fraction >= MIN_EDGE_SUPPORT and _consistent(fit, box):
            return fit.center, True
    log.debug("edge fit failed for box %s; using the box centre", box.as_list())
    return box.center, False


def _consistent(fit: EdgeFit, box: Box) -> bool:
    """A fitted outline agrees with its box: centre within a quarter of the size, size within 20 %."""
    bw, bh = box.width, box.height
    cx, cy = box.center
    return (
        abs(fit.center[0] - cx) < 0.25 * bw
        and abs(fit.center[1] - cy) < 0.25 * bh
        and 0.8 * min(bw, bh) < min(fit.size)
        and max(fit.size) < 1.2 * max(bw, bh)
    )


# ---------------------------------------------------------------------------------------------------- defects


def blob_area_px(gray: np.ndarray, box: Box) -> float | None:
    """Pixels inside `box` that differ from the ring of background around it (Otsu on the absolute difference);
    None when the split is not trustworthy (no contrast, or nearly all / nothing of the box)."""
    h_img, w_img = gray.shape
    x1, y1 = max(0, int(math.floor(box.x1))), max(0, int(math.floor(box.y1)))
    x2, y2 = min(w_img, int(math.ceil(box.x2))), min(h_img, int(math.ceil(box.y2)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    ring_px = max(3, int(0.15 * max(x2 - x1, y2 - y1)))
    rx1, ry1 = max(0, x1 - ring_px), max(0, y1 - ring_px)
    rx2, ry2 = min(w_img, x2 + ring_px), min(h_img, y2 + ring_px)
    around = gray[ry1:ry2, rx1:rx2].copy()
    inside = np.zeros(around.shape, bool)
    inside[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] = True
    ring = around[~inside]
    if ring.size < 8:
        return None
    diff = np.abs(gray[y1:y2, x1:x2] - float(np.median(ring)))  # the ring's majority: the surface around
    scaled = np.clip(diff * (255.0 / max(float(diff.max()), 1e-6)), 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    on = mask.astype(bool)
    frac = float(on.mean())
    if not (0.03 <= frac <= 0.95):
        return None
    # trust the split when it explains most of the variation inside the box (Otsu's separability) and the blob
    # stands out from the surroundings by more than camera noise
    fg, rest = diff[on], diff[~on]
    total_var = float(diff.var())
    between = frac * (1 - frac) * (float(fg.mean()) - float(rest.mean())) ** 2
    if total_var <= 1e-6 or between / total_var < 0.6 or float(np.median(fg)) < MIN_BLOB_CONTRAST:
        return None
    # a line a few px wide (a crack) is widened by the optics' blur: its segmented area is not its area
    if on.sum() / max(x2 - x1, y2 - y1) < MIN_BLOB_MEAN_WIDTH_PX:
        return None
    return float(on.sum())


def _defect_measurements(gray: np.ndarray, box: Box, mm: float, margin_px: float = 0.0) -> dict[str, float]:
    w, h = max(box.width - margin_px, 1.0), max(box.height - margin_px, 1.0)
    out = {
        "length_mm": max(w, h) * mm,
        "width_mm": min(w, h) * mm,
        "area_mm2": w * h * mm * mm,
    }
    blob = blob_area_px(gray, box)
    if blob is not None:
        out["blob_area_mm2"] = blob * mm * mm
    return out


# ------------------------------------------------------------------------------------------------- public API


def _pairs(
    detections: list[Detection], spec: DerivedDefect
) -> tuple[list[tuple[Detection, Detection]], list[Detection]]:
    """(inner, outer) pairs, each outer part with its most confident inner part whose centre lies in it; and the
    outer parts with no inner part."""
    inner_name, outer_name = spec.parts
    inners = sorted((d for d in detections if d.defect_class == inner_name), key=lambda d: -d.confidence)
    outers = sorted((d for d in detections if d.defect_class == outer_name), key=lambda d: -d.confidence)
    pairs, lonely = [], []
    for outer in outers:
        inner = next((d for d in inners if outer.box.contains(*d.box.center)), None)
        if inner is None:
            lonely.append(outer)
        else:
            pairs.append((inner, outer))
    return pairs, lonely


def measure_findings(
    image: np.ndarray, detections: list[Detection], line: LineConfig, box_margin_px: float = 0.0
) -> list[Measured]:
    """Defect findings with measurements (mm from the line's calibration) plus the line's derived defects; parts
    (tab, weld) are used for the derived defects and not returned. `box_margin_px`: how much wider and taller the
    locator's boxes are than the defects they mark (fitted by `defect-agent calibrate --fusion`), taken off the
    sizes."""
    mm = line.calibration.mm_per_px
    roles = {c.name: c.role for c in line.classes}
    gray = to_gray(image)
    found: list[Measured] = []
    for det in detections:
        role = roles.get(det.defect_class)
        if role is None:
            log.warning("detection of class %r is not in line %r; ignored", det.defect_class, line.name)
            continue
        if role == "part":
            continue
        found.append(
            Measured(
                defect_class=det.defect_class,
                box=det.box,
                source="detector",
                confidence=det.confidence,
                measurements=_defect_measurements(gray, det.box, mm, box_margin_px),
                verifier_score=det.verifier_score,
                detector_class=det.detector_class,
                alternatives=det.alternatives,
            )
        )
    for spec in line.derived:
        pairs, lonely = _pairs(detections, spec)
        if spec.rule == "offset":
            for inner, outer in pairs:
                m = measure_offset(image, inner.box, outer.box, mm)
                found.append(
                    Measured(
                        defect_class=spec.name,
                        box=inner.box,
                        source="derived",
                        confidence=min(inner.confidence, outer.confidence),
                        measurements={
                            "offset_mm": m.offset_mm,
                            "offset_x_mm": m.dx_mm,
                            "offset_y_mm": m.dy_mm,
                            "refined": 1.0 if (m.inner_refined and m.outer_refined) else 0.0,
                        },
                        present=m.offset_mm > spec.tolerance_mm,
                    )
                )
        elif spec.rule == "absent":
            for outer in lonely:
                found.append(
                    Measured(
                        defect_class=spec.name,
                        box=outer.box,
                        source="derived",
                        confidence=outer.confidence,
                        measurements={},
                        present=True,
                    )
                )
    return found
