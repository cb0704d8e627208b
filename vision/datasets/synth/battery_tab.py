"""Procedural images of the built-in `battery_tab` line: a metal tab lying on a cell's terminal pad, seen from above
by the line camera, with an ultrasonic weld (a knurled field of pyramid dimples) nominally centred on it.

Everything is rendered from signed-distance functions evaluated at pixel centres, so edges are anti-aliased and the
ground truth (boxes, weld offset in mm) is exact to a fraction of a pixel; that lets the measurement module be
checked against the truth at the 0.01 mm level. One integer seed fixes the image and its truth.

Coordinates: continuous pixel units, pixel (i, j) covers [i, i+1) x [j, j+1), so the image spans [0, W] x [0, H]
(the convention of YOLO labels and of ultralytics' xyxy boxes)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from vision.detection import Box

log = logging.getLogger(__name__)

LINE_NAME = "battery_tab"
DEFECT_CLASSES = ("spatter", "crack", "burn")


class BatteryTabParams(BaseModel):
    """Knobs of the generator. Defaults give the line's nominal mix; tests force single cases with the `force_*`
    fields (None = sample)."""

    model_config = ConfigDict(extra="forbid")

    width: int = 640
    height: int = 480
    mm_per_px: float = 0.025  # the line camera's calibration (configs/lines/battery_tab.yaml)
    # tab and weld nominal size in px (before the +-5 % scale jitter)
    tab_size: tuple[float, float] = (320.0, 280.0)
    weld_size: tuple[float, float] = (180.0, 110.0)
    scale_jitter: float = 0.05
    max_rotation_deg: float = 3.0
    position_jitter_px: float = 30.0
    # defect mix
    p_offset: float = 0.45  # share of images whose weld offset is above 0.3 mm
    p_near_threshold: float = 0.25  # of each group, share sampled close to the 0.3 mm threshold
    p_spatter: float = 0.40
    p_crack: float = 0.15
    p_burn: float = 0.15
    p_missing_weld: float = 0.07
    # camera
    blur_sigma: tuple[float, float] = (0.5, 1.2)
    noise_sigma: tuple[float, float] = (1.5, 4.0)
    # forcing single cases (tests, planted defects)
    force_offset_mm: float | None = None
    force_offset_angle_deg: float | None = None  # direction of the offset in image coordinates
    force_missing_weld: bool | None = None
    force_spatter: bool | None = None
    force_crack: bool | None = None
    force_burn: bool | None = None
    # weld knurl look. Defaults: the look the shipped locator was trained on (a low-angle light from the upper left,
    # sampled at pixel centres). A diffuse dome light is e.g. knurl_directional=(0.1, 0.35), knurl_relief=45,
    # supersample=3 (integrates each pixel, no aliasing of the facet ridges).
    supersample: int = 1  # samples per pixel side when rendering the weld pattern
    knurl_directional: tuple[float, float] = (1.0, 1.0)  # share of directional shading on the facets
    knurl_relief: float = 14.0  # grey levels between dimple pits and ridges


class TruthObject(BaseModel):
    """One labelled object: a part (tab, weld) or a defect (a spatter bead group, a crack, a burn mark)."""

    name: str
    box: Box
    area_px: float | None = None  # rendered area (sum of coverage), for checking segmented areas


class BatteryTabTruth(BaseModel):
    """Exact ground truth of one generated image."""

    image: str | None = None  # file name once written by generate_batch
    seed: int
    width: int
    height: int
    mm_per_px: float
    tab_center_px: tuple[float, float]
    tab_size_px: tuple[float, float]  # (across, along) of the un-rotated tab
    tab_angle_deg: float
    weld_center_px: tuple[float, float] | None = None
    weld_size_px: tuple[float, float] | None = None
    offset_mm: float | None = None  # |weld centre - tab centre| in mm; None when the weld is missing
    offset_vector_mm: tuple[float, float] | None = None  # (dx, dy) in image axes
    missing_weld: bool = False
    objects: list[TruthObject] = Field(default_factory=list)

    def boxes(self, name: str) -> list[Box]:
        return [o.box for o in self.objects if o.name == name]

    def has(self, name: str, tolerance_mm: float = 0.2) -> bool:
        """Whether the image shows `name`: a detected class (spatter, crack, burn), `missing_weld`, or `weld_offset`
        (offset above `tolerance_mm`, the line's tolerance by default)."""
        if name == "missing_weld":
            return self.missing_weld
        if name == "weld_offset":
            return self.offset_mm is not None and self.offset_mm > tolerance_mm
        return any(o.name == name for o in self.objects)

    def matches(self, offset_gt_mm: float | None = None, require: set[str] | frozenset[str] = frozenset()) -> bool:
        """Ground truth of a conjunctive query: offset strictly above `offset_gt_mm` (when given) and every class in
        `require` present. The seed query "weld offset > 0.3 mm AND spatter" is matches(0.3, {"spatter"})."""
        if offset_gt_mm is not None and (self.offset_mm is None or not self.offset_mm > offset_gt_mm):
            return False
        return all(self.has(name) for name in require)

    @property
    def seed_query_match(self) -> bool:
        return self.matches(0.3, {"spatter"})


# ----------------------------------------------------------------------------------------------- rendering helpers


class _Canvas:
    """Pixel-centre coordinate grids shared by the SDF renderers."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.x = (np.arange(width, dtype=np.float32) + 0.5)[None, :].repeat(height, 0)
        self.y = (np.arange(height, dtype=np.float32) + 0.5)[:, None].repeat(width, 1)

    def local(self, cx: float, cy: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in a frame centred at (cx, cy) and rotated by angle (u along the frame's x axis)."""
        a = math.radians(angle_deg)
        dx, dy = self.x - cx, self.y - cy
        return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


def _rounded_rect_sdf(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float, radius: float) -> np.ndarray:
    qx = np.abs(u) - (half_w - radius)
    qy = np.abs(v) - (half_h - radius)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _coverage(sdf: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased fill from a signed distance (negative inside): a linear ramp one `softness` wide at the edge."""
    return np.clip(0.5 - sdf / softness, 0.0, 1.0)


def _rounded_rect_area(half_w: float, half_h: float, radius: float) -> float:
    return 4.0 * half_w * half_h - (4.0 - math.pi) * radius * radius


def _rotated_rect_box(cx: float, cy: float, half_w: float, half_h: float, radius: float, angle_deg: float) -> Box:
    """Exact axis-aligned box of a rounded rectangle: that of the inner rectangle grown by the corner radius."""
    a = math.radians(angle_deg)
    iw, ih = half_w - radius, half_h - radius
    ex = abs(iw * math.cos(a)) + abs(ih * math.sin(a)) + radius
    ey = abs(iw * math.sin(a)) + abs(ih * math.cos(a)) + radius
    return Box(x1=cx - ex, y1=cy - ey, x2=cx + ex, y2=cy + ey)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a coarse random grid upsampled with bicubic interpolation."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _clip_box(box: Box, w: int, h: int) -> Box:
    return Box(
        x1=min(max(box.x1, 0.0), w),
        y1=min(max(box.y1, 0.0), h),
        x2=min(max(box.x2, 0.0), w),
        y2=min(max(box.y2, 0.0), h),
    )


def _sample_offset_mm(rng: np.random.Generator, p: BatteryTabParams) -> float:
    """~p_offset above 0.3 mm; the rest well inside tolerance, with a share of both close to the threshold so a
    measurement has to be accurate to sort them."""
    near = rng.random() < p.p_near_threshold
    if rng.random() < p.p_offset:
        return float(rng.uniform(0.30, 0.40) if near else rng.uniform(0.30, 0.90))
    return float(rng.uniform(0.20, 0.30) if near else rng.uniform(0.0, 0.15))


def _decide(force: bool | None, prob: float, rng: np.random.Generator) -> bool:
    draw = rng.random() < prob  # always drawn so forcing one case leaves the rest of the sample unchanged
    return draw if force is None else force


# ------------------------------------------------------------------------------------------------------ generator


def generate_battery_tab(seed: int, rng_params: BatteryTabParams | None = None) -> tuple[np.ndarray, BatteryTabTruth]:
    """Render one BGR uint8 image (height x width x 3) and its exact truth; deterministic in (seed, params)."""
    p = rng_params or BatteryTabParams()
    # separate streams: planting or removing one defect leaves the scene, the other defects and the camera unchanged
    streams = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xBA77]).spawn(5)
    rng, burn_rng, crack_rng, spatter_rng, cam_rng = (np.random.default_rng(s) for s in streams)
    W, H = p.width, p.height
    cv = _Canvas(W, H)

    # --- the scene's random choices first, so each case is a pure function of the seed
    scale = 1.0 + rng.uniform(-p.scale_jitter, p.scale_jitter)
    angle = float(rng.uniform(-p.max_rotation_deg, p.max_rotation_deg))
    tab_hw, tab_hh = p.tab_size[0] * scale / 2, p.tab_size[1] * scale / 2
    tab_r = float(rng.uniform(6, 16))
    tcx = W / 2 + float(rng.uniform(-p.position_jitter_px, p.position_jitter_px)) * 1.5
    tcy = H / 2 + float(rng.uniform(-p.position_jitter_px, p.position_jitter_px)) * 0.8
    missing = _decide(p.force_missing_weld, p.p_missing_weld, rng)
    offset_mm = _sample_offset_mm(rng, p) if p.force_offset_mm is None else float(p.force_offset_mm)
    offset_dir = float(rng.uniform(0, 2 * math.pi))
    if p.force_offset_angle_deg is not None:
        offset_dir = math.radians(p.force_offset_angle_deg)
    has_spatter = _decide(p.force_spatter, p.p_spatter, rng)
    has_crack = _decide(p.force_crack, p.p_crack, rng)
    has_burn = _decide(p.force_burn, p.p_burn, rng)
    wscale = scale * (1.0 + rng.uniform(-0.04, 0.04))
    weld_hw, weld_hh = p.weld_size[0] * wscale / 2, p.weld_size[1] * wscale / 2
    off_px = offset_mm / p.mm_per_px
    wcx = tcx + off_px * math.cos(offset_dir)
    wcy = tcy + off_px * math.sin(offset_dir)

    # --- background: the cell's terminal pad (brushed, nickel-plated) over the casing, with an insulating film band
    base = float(rng.uniform(70, 105))
    bg = np.full((H, W), base, np.float32)
    bg += 9.0 * _smooth_noise(rng, H, W, 48) + 3.0 * _smooth_noise(rng, H, W, 6)
    pad_angle = angle + float(rng.uniform(-1.5, 1.5))
    pu, pv = cv.local(tcx + rng.uniform(-40, 40), tcy + rng.uniform(-30, 30), pad_angle)
    pad = _coverage(_rounded_rect_sdf(pu, pv, tab_hw + rng.uniform(90, 160), tab_hh + rng.uniform(60, 120), 30.0), 1.5)
    pad_level = base + float(rng.uniform(20, 40))
    streaks = np.interp(pu, np.arange(-800, 800, dtype=np.float32), rng.standard_normal(1600).astype(np.float32))
    bg = bg * (1 - pad) + (pad_level + 4.0 * streaks + 2.0 * _smooth_noise(rng, H, W, 3)) * pad
    img = np.repeat(bg[:, :, None], 3, axis=2)
    tint = np.array([1.0 + rng.uniform(0.0, 0.06), 1.0, 1.0 - rng.uniform(0.0, 0.05)], np.float32)  # cool steel
    img *= tint
    film_side = rng.integers(0, 4)
    film_depth = float(rng.uniform(15, 45))
    dist_edge = [cv.y, H - cv.y, cv.x, W - cv.x][film_side]
    film = _coverage(dist_edge - film_depth, 2.0)
    film_colour = np.array([rng.uniform(120, 170), rng.uniform(70, 100), rng.uniform(20, 45)], np.float32)  # blue PET
    img = img * (1 - film[..., None]) + (film_colour + 6 * _smooth_noise(rng, H, W, 20)[..., None]) * film[..., None]

    # --- the tab: drop shadow, then brushed metal
    u, v = cv.local(tcx, tcy, angle)
    tab_sdf = _rounded_rect_sdf(u, v, tab_hw, tab_hh, tab_r)
    su, sv = cv.local(tcx + 3.0, tcy + 4.0, angle)
    shadow = cv2.GaussianBlur(_coverage(_rounded_rect_sdf(su, sv, tab_hw, tab_hh, tab_r)), (0, 0), 4.0)
    img *= (1.0 - 0.25 * shadow)[..., None]
    tab_cov = _coverage(tab_sdf)
    tab_level = float(rng.uniform(175, 215))
    brushed = np.interp(
        u,
        np.arange(-600, 600, dtype=np.float32),
        cv2.GaussianBlur(rng.standard_normal((1, 1200)).astype(np.float32), (0, 0), 0.8)[0],
    )
    sheen = 12.0 * np.exp(-(((u - rng.uniform(-tab_hw, tab_hw)) / (tab_hw * 0.8)) ** 2))  # broad specular band
    tab_val = tab_level + 4.0 * brushed + 3.0 * _smooth_noise(rng, H, W, 40) + sheen
    tab_colour = np.array([1.0 - rng.uniform(0.02, 0.08), 1.0, 1.0 + rng.uniform(0.0, 0.04)], np.float32)  # nickel
    tab_img = tab_val[..., None] * tab_colour
    img = img * (1 - tab_cov[..., None]) + tab_img * tab_cov[..., None]

    objects = [
        TruthObject(
            name="tab",
            box=_clip_box(_rotated_rect_box(tcx, tcy, tab_hw, tab_hh, tab_r, angle), W, H),
            area_px=_rounded_rect_area(tab_hw, tab_hh, tab_r),
        )
    ]

    # --- the weld: darker, knurled field of pyramid dimples; pattern phase anchored at the weld centre (the sonotrode
    # footprint is symmetric about its centre)
    weld_r = 4.0
    if not missing:
        wbox = _rotated_rect_box(wcx, wcy, weld_hw, weld_hh, weld_r, angle)
        # render inside the weld's box plus the halo's reach only: the pattern is the costliest part of the image
        ry1, ry2 = max(0, int(wbox.y1) - 32), min(H, int(wbox.y2) + 33)
        rx1, rx2 = max(0, int(wbox.x1) - 32), min(W, int(wbox.x2) + 33)
        roi = (slice(ry1, ry2), slice(rx1, rx2))
        weld_sdf_lo, weld_cov, weld_sum = _render_weld(
            cv, roi, tab_val, wcx, wcy, angle, weld_hw, weld_hh, weld_r, scale, rng, p
        )
        weld_img_sum = weld_sum[..., None] * tab_colour * np.array([0.97, 0.98, 1.02], np.float32)
        # heat-affected halo: a faint symmetric darkening just outside the weld
        halo = np.exp(-np.maximum(weld_sdf_lo, 0) / 6.0) * (1 - weld_cov) * 0.08
        patch = img[roi] * (1.0 - halo * tab_cov[roi])[..., None]
        img[roi] = patch * (1 - weld_cov[..., None]) + weld_img_sum
        objects.append(
            TruthObject(name="weld", box=_clip_box(wbox, W, H), area_px=_rounded_rect_area(weld_hw, weld_hh, weld_r))
        )

    # defects gather around the weld footprint (or where it should have been)
    fcx, fcy = (wcx, wcy) if not missing else (tcx, tcy)

    def perimeter_point(rng: np.random.Generator, outward: float) -> tuple[float, float, float]:
        """A point on the weld rectangle's outline pushed `outward` px, and the outward normal's angle (image)."""
        side = rng.integers(0, 4)
        t = rng.uniform(-0.9, 0.9)
        lu, lv, nu, nv = [
            (t * weld_hw, -weld_hh, 0, -1),
            (t * weld_hw, weld_hh, 0, 1),
            (-weld_hw, t * weld_hh, -1, 0),
            (weld_hw, t * weld_hh, 1, 0),
        ][side]
        lu, lv = lu + nu * outward, lv + nv * outward
        a = math.radians(angle)
        x = fcx + lu * math.cos(a) - lv * math.sin(a)
        y = fcy + lu * math.sin(a) + lv * math.cos(a)
        return x, y, math.atan2(nu * math.sin(a) + nv * math.cos(a), nu * math.cos(a) - nv * math.sin(a))

    if has_burn:
        img, box, area = _render_burn(img, burn_rng, perimeter_point, cv)
        if box is not None:
            objects.append(TruthObject(name="burn", box=_clip_box(box, W, H), area_px=area))
    if has_crack:
        img, box, area = _render_crack(img, crack_rng, perimeter_point, tab_sdf)
        objects.append(TruthObject(name="crack", box=_clip_box(box, W, H), area_px=area))
    if has_spatter:
        for _ in range(int(spatter_rng.integers(1, 4))):
            img, box, area = _render_spatter_cluster(img, spatter_rng, perimeter_point)
            objects.append(TruthObject(name="spatter", box=_clip_box(box, W, H), area_px=area))

    # --- lighting and camera
    gx, gy = cam_rng.uniform(-0.12, 0.12, size=2)
    light_field = 1.0 + gx * (cv.x / W - 0.5) * 2 + gy * (cv.y / H - 0.5) * 2
    r2 = ((cv.x - W / 2) / W) ** 2 + ((cv.y - H / 2) / H) ** 2
    light_field *= 1.0 - cam_rng.uniform(0.1, 0.3) * r2
    gain = cam_rng.uniform(0.88, 1.12)
    bias = cam_rng.uniform(-12, 12)
    img = img * (light_field * gain)[..., None] + bias
    img = cv2.GaussianBlur(img, (0, 0), float(cam_rng.uniform(*p.blur_sigma)))
    noise_sd = float(cam_rng.uniform(*p.noise_sigma))
    img += cam_rng.standard_normal(img.shape, dtype=np.float32) * noise_sd
    img += np.sqrt(np.clip(img, 0, None)) * cam_rng.standard_normal(img.shape, dtype=np.float32) * 0.25  # shot noise
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    truth = BatteryTabTruth(
        seed=int(seed),
        width=W,
        height=H,
        mm_per_px=p.mm_per_px,
        tab_center_px=(tcx, tcy),
        tab_size_px=(2 * tab_hw, 2 * tab_hh),
        tab_angle_deg=angle,
        weld_center_px=None if missing else (wcx, wcy),
        weld_size_px=None if missing else (2 * weld_hw, 2 * weld_hh),
        offset_mm=None if missing else math.hypot(wcx - tcx, wcy - tcy) * p.mm_per_px,
        offset_vector_mm=None if missing else ((wcx - tcx) * p.mm_per_px, (wcy - tcy) * p.mm_per_px),
        missing_weld=missing,
        objects=objects,
    )
    return out, truth


def _render_weld(
    cv: _Canvas,
    roi: tuple[slice, slice],
    tab_val: np.ndarray,
    wcx: float,
    wcy: float,
    angle: float,
    half_w: float,
    half_h: float,
    radius: float,
    scale: float,
    rng: np.random.Generator,
    p: BatteryTabParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The knurled weld inside `roi`, sampled ss x ss times per pixel (ss > 1 integrates each pixel as a sensor
    does, so the sharp facet ridges do not alias). Returns the signed distance at pixel centres, the coverage and
    the coverage-weighted grey value (to blend: img * (1 - coverage) + value)."""
    pitch = float(rng.uniform(11, 16)) * scale
    weld_dark = float(rng.uniform(0.55, 0.72))
    amp = float(rng.uniform(22, 36))
    # facets shaded by a low-angle light (directional share) plus pit / ridge relief, which is all a diffuse dome
    # light would show
    directional = float(rng.uniform(*p.knurl_directional))
    ss = p.supersample
    ys, xs = roi
    a = math.radians(angle)
    c, s_ = math.cos(a), math.sin(a)
    dx, dy = cv.x[roi] - wcx, cv.y[roi] - wcy
    sdf_lo = _rounded_rect_sdf(dx * c + dy * s_, -dx * s_ + dy * c, half_w, half_h, radius)
    h, w = sdf_lo.shape
    sub = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    gx = (xs.start + np.arange(w, dtype=np.float32)[:, None] + sub[None, :]).reshape(-1)
    gy = (ys.start + np.arange(h, dtype=np.float32)[:, None] + sub[None, :]).reshape(-1)
    dxh, dyh = gx[None, :] - wcx, gy[:, None] - wcy
    wu, wv = dxh * c + dyh * s_, -dxh * s_ + dyh * c
    cov_hi = np.clip(0.5 - _rounded_rect_sdf(wu, wv, half_w, half_h, radius) * ss, 0.0, 1.0)  # 1/ss px ramp
    ru, rv = (wu / pitch) % 1.0 - 0.5, (wv / pitch) % 1.0 - 0.5
    fu, fv = np.abs(ru), np.abs(rv)
    shade = np.where(fu > fv, np.sign(ru) * -0.6, np.sign(rv) * -0.8)  # pyramid facet, lit from the upper left
    depth = np.maximum(fu, fv)  # 0 at a dimple's centre, 0.5 on the ridges
    base = np.repeat(np.repeat(tab_val[roi], ss, axis=0), ss, axis=1) * weld_dark
    val_hi = (base + amp * directional * shade + p.knurl_relief * (depth - 0.25)) * cov_hi
    cov = cv2.resize(cov_hi, (w, h), interpolation=cv2.INTER_AREA)
    val = cv2.resize(val_hi.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return sdf_lo, cov, val


def _render_spatter_cluster(
    img: np.ndarray, rng: np.random.Generator, perimeter_point
) -> tuple[np.ndarray, Box, float]:
    """A group of solidified weld beads: dark oxidised spheres with a specular highlight, some with a short splash
    tail pointing away from the weld."""
    cx, cy, normal = perimeter_point(rng, float(rng.uniform(6, 34)))
    n = int(rng.integers(3, 9))
    spread = float(rng.uniform(5, 16))
    x1 = y1 = math.inf
    x2 = y2 = -math.inf
    H, W = img.shape[:2]
    covered = np.zeros((H, W), np.float32)  # union of the beads, for the cluster's true area
    for i in range(n):
        r = float(rng.uniform(1.8, 4.8)) if i else float(rng.uniform(3.0, 5.0))
        bx = cx + rng.normal(0, spread * 0.5) + math.cos(normal) * abs(rng.normal(0, spread * 0.4))
        by = cy + rng.normal(0, spread * 0.5) + math.sin(normal) * abs(rng.normal(0, spread * 0.4))
        tail = float(rng.uniform(0, 3.0 * r)) if rng.random() < 0.35 else 0.0
        pad = int(math.ceil(r + tail + 3))
        ix1, iy1 = max(0, int(bx) - pad), max(0, int(by) - pad)
        ix2, iy2 = min(W, int(bx) + pad + 1), min(H, int(by) + pad + 1)
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        yy, xx = np.mgrid[iy1:iy2, ix1:ix2].astype(np.float32) + 0.5
        dx, dy = xx - bx, yy - by
        # a splash: the disc stretched along the outward normal on one side
        along = dx * math.cos(normal) + dy * math.sin(normal)
        across = -dx * math.sin(normal) + dy * math.cos(normal)
        stretch = np.where(along > 0, 1.0 + tail / r, 1.0)
        d = np.sqrt((along / stretch) ** 2 + across**2)
        cov = np.clip(r + 0.5 - d, 0, 1)
        np.maximum(covered[iy1:iy2, ix1:ix2], cov, out=covered[iy1:iy2, ix1:ix2])
        z = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
        nx, ny = dx / r, dy / r
        lit = np.clip(-0.55 * nx - 0.65 * ny + 0.5 * z, 0, 1)
        spec = lit**6
        dark = float(rng.uniform(35, 80))
        val = dark + 60 * lit + 150 * spec
        colour = np.array([0.95, 1.0, 1.08], np.float32)  # slightly warm oxide
        patch = img[iy1:iy2, ix1:ix2]
        patch[:] = patch * (1 - cov[..., None]) + (val[..., None] * colour) * cov[..., None]
        ext_x = r + (tail * abs(math.cos(normal)) if tail else 0) + 1.0
        ext_y = r + (tail * abs(math.sin(normal)) if tail else 0) + 1.0
        x1, y1 = min(x1, bx - ext_x), min(y1, by - ext_y)
        x2, y2 = max(x2, bx + ext_x), max(y2, by + ext_y)
    if not math.isfinite(x1):  # every bead fell outside the frame: mark the cluster centre
        x1, y1, x2, y2 = cx - 2, cy - 2, cx + 2, cy + 2
    return img, Box(x1=x1, y1=y1, x2=x2, y2=y2), float(covered.sum())


def _render_crack(
    img: np.ndarray, rng: np.random.Generator, perimeter_point, tab_sdf: np.ndarray
) -> tuple[np.ndarray, Box, float]:
    """A thin dark jagged polyline starting at the weld edge and running outward across the tab."""
    x, y, normal = perimeter_point(rng, float(rng.uniform(-2, 6)))
    heading = normal + rng.uniform(-0.7, 0.7)
    length = float(rng.uniform(40, 130))
    pts = [(x, y)]
    H, W = img.shape[:2]
    travelled = 0.0
    while travelled < length:
        step = float(rng.uniform(5, 12))
        heading += rng.normal(0, 0.35)
        nx, ny = pts[-1][0] + step * math.cos(heading), pts[-1][1] + step * math.sin(heading)
        ix, iy = int(nx), int(ny)
        if not (0 <= ix < W and 0 <= iy < H) or tab_sdf[iy, ix] > -3:  # a crack stays in the tab
            break
        pts.append((nx, ny))
        travelled += step
    if len(pts) < 3:  # too close to the tab edge: fall back to a short crack along the normal, inwards
        pts = [(x, y), (x - 20 * math.cos(normal), y - 20 * math.sin(normal))]
    mask = np.zeros(img.shape[:2], np.uint8)
    shift = 4
    poly = np.array([[int(round(px * 16 - 8)), int(round(py * 16 - 8))] for px, py in pts], np.int32)
    thickness = int(rng.integers(1, 3))
    cv2.polylines(mask, [poly], False, 255, thickness, cv2.LINE_AA, shift)
    if len(pts) > 4 and rng.random() < 0.5:  # a short branch
        k = int(rng.integers(1, len(pts) - 2))
        bx, by = pts[k]
        b_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        bpts = [(bx, by), (bx + 14 * math.cos(b_heading), by + 14 * math.sin(b_heading))]
        cv2.polylines(
            mask,
            [np.array([[int(px * 16 - 8), int(py * 16 - 8)] for px, py in bpts], np.int32)],
            False,
            200,
            1,
            cv2.LINE_AA,
            shift,
        )
        pts += bpts
    m = mask.astype(np.float32) / 255.0
    depth = float(rng.uniform(0.55, 0.75))
    img = img * (1 - depth * m)[..., None]
    xs, ys = [q[0] for q in pts], [q[1] for q in pts]
    pad = thickness / 2 + 1.5
    return img, Box(x1=min(xs) - pad, y1=min(ys) - pad, x2=max(xs) + pad, y2=max(ys) + pad), float(m.sum())


def _render_burn(
    img: np.ndarray, rng: np.random.Generator, perimeter_point, cv: _Canvas
) -> tuple[np.ndarray, Box | None, float]:
    """A scorch: an irregular dark-brown blob with a straw / blue heat-tint fringe, beside the weld edge."""
    radius = float(rng.uniform(13, 30))
    x, y, _ = perimeter_point(rng, radius * float(rng.uniform(0.6, 1.4)))
    H, W = img.shape[:2]
    pad = int(radius * 2.2) + 4
    ix1, iy1, ix2, iy2 = max(0, int(x) - pad), max(0, int(y) - pad), min(W, int(x) + pad), min(H, int(y) + pad)
    if ix2 <= ix1 or iy2 <= iy1:
        return img, None, 0.0
    dx = cv.x[iy1:iy2, ix1:ix2] - x
    dy = cv.y[iy1:iy2, ix1:ix2] - y
    theta = np.arctan2(dy, dx)
    rr = np.full_like(theta, radius)
    for k in range(2, 6):
        rr += radius * rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    d = np.sqrt(dx**2 + dy**2) - rr
    core = 1.0 / (1.0 + np.exp(d / 3.0))  # soft scorch edge
    fringe = np.exp(-(((d - 4.0) / 6.0) ** 2)) * (1 - core)
    mottle = 1.0 + 0.15 * cv2.resize(
        rng.standard_normal((8, 8)).astype(np.float32), (ix2 - ix1, iy2 - iy1), interpolation=cv2.INTER_CUBIC
    )
    dark = np.array([rng.uniform(20, 35), rng.uniform(32, 48), rng.uniform(50, 75)], np.float32)  # brown (BGR)
    tint = (
        np.array([80, 150, 190], np.float32)
        if rng.random() < 0.5  # straw
        else np.array([170, 120, 90], np.float32)
    )  # blue
    patch = img[iy1:iy2, ix1:ix2]
    a_core = (0.88 * core)[..., None]
    patch[:] = patch * (1 - a_core) + (dark * mottle[..., None]) * a_core
    a_fr = (0.35 * fringe)[..., None]
    patch[:] = patch * (1 - a_fr) + (patch * 0.5 + tint * 0.5) * a_fr
    on = core > 0.3
    if not on.any():
        return img, None, 0.0
    ys, xs = np.nonzero(on)
    return (
        img,
        Box(
            x1=ix1 + float(xs.min()),
            y1=iy1 + float(ys.min()),
            x2=ix1 + float(xs.max()) + 1,
            y2=iy1 + float(ys.max()) + 1,
        ),
        float(core.sum()),
    )


# ---------------------------------------------------------------------------------------------------- batch writer


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """Independent per-image seed from a batch seed, an index and a stream (e.g. train / val)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, index]).generate_state(1)[0])


def generate_batch(
    out_dir: Path | str,
    n: int,
    seed: int,
    params: BatteryTabParams | None = None,
    stream: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write n PNG images to out_dir and their truth, one JSON line each, to out_dir/truth.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with (out / "truth.jsonl").open("w", encoding="utf-8") as fh:
        for i in tqdm(range(n), desc=f"battery_tab -> {out}", disable=not progress, unit="img"):
            img, truth = generate_battery_tab(image_seed(seed, i, stream), params)
            name = f"battery_tab_s{seed}_{stream}_{i:05d}.png"
            path = out / name
            if not cv2.imwrite(str(path), img):
                raise OSError(f"could not write {path}")
            truth.image = name
            fh.write(truth.model_dump_json() + "\n")
            paths.append(path)
    log.info("wrote %d battery_tab images to %s", n, out)
    return paths


def read_truth(path: Path | str) -> list[BatteryTabTruth]:
    """Load a truth.jsonl written by generate_batch."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [BatteryTabTruth.model_validate(json.loads(line)) for line in lines if line.strip()]
