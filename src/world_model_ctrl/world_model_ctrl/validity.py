"""Could room_sim have rendered this frame? Judged by the simulator's own rendering rules.

room_sim.world paints a static background (walls, floor inside them, exact area coverage at
fractional edges), then the goal, then the robot, each an axis-aligned rectangle of known size
with exact per-pixel area coverage. So every pixel is

    img = static (1 - g)(1 - r) + goal_colour g (1 - r) + robot_colour r

with r the robot's and g the goal's coverage of that pixel. The check reads v = g (1 - r) and r
off each pixel (two unknowns, three channels: least squares), fits one ideal rectangle of the
right size to each (a sub-pixel grid search; the goal fit knows what the robot hides), rebuilds
the frame from the two fits and compares it with the input. A valid frame matches to rounding;
a second robot, a missing goal, noise, a colour shift, blur or a missing wall does not.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Optional

import cv2
import numpy as np

from room_sim.world import RoomWorld, WorldConfig

PIXEL_TOL = 16.0      # largest per-pixel deviation (0..255) from the rebuilt frame
SHAPE_TOL = 0.25      # largest per-pixel coverage error of a blob against its fitted rectangle
AREA_TOL = 0.2        # relative blob-area tolerance (plus half a pixel)


@lru_cache(maxsize=8)
def _static(cfg_json: str) -> tuple[np.ndarray, np.ndarray]:
    """Background the simulator draws under the blobs (float, exact) and its pure-wall mask."""
    world = RoomWorld(WorldConfig.from_dict(json.loads(cfg_json)))
    static = world._static                                     # (S, S, 3) float64, exact
    floor = np.asarray(world.cfg.floor_color, np.float64)
    wall = np.asarray(world.cfg.wall_color, np.float64)
    # share of floor in each pixel, from the channel where walls and floor differ most
    c = int(np.argmax(np.abs(floor - wall)))
    floor_share = (static[..., c] - wall[c]) / (floor[c] - wall[c])
    return static, floor_share < 1e-9


def _coverage(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """(K,) intervals -> (K, n) fraction of each unit pixel covered (as room_sim renders)."""
    edges = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(hi[:, None], edges + 1) - np.maximum(lo[:, None], edges), 0, 1)


def _fit_box(m1: np.ndarray, m2: np.ndarray, size_px: tuple[float, float],
             bounds_px: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float, float]:
    """The w x h rectangle whose coverage a b^T best explains the data: (coverage (S, S),
    centre row, centre col), centres in pixels.

    Minimises sum (d - a b^T o)^2 = const - 2 a^T M1 b + (a^2)^T M2 (b^2) with M1 = d o and
    M2 = o^2 (o: the visible share of each pixel), over a grid of centres, coarse then fine.
    """
    n = m1.shape[0]
    w, h = size_px
    lo, hi = bounds_px                                          # (col, row) centre limits

    def best(rows, cols):
        a = _coverage(rows - h / 2, rows + h / 2, n)            # (Kr, n)
        b = _coverage(cols - w / 2, cols + w / 2, n)            # (Kc, n)
        # einsum, not BLAS: products this small lose more to BLAS threads on a busy CPU
        cost = (np.einsum('in,jn->ij', np.einsum('in,nm->im', a * a, m2), b * b)
                - 2 * np.einsum('in,jn->ij', np.einsum('in,nm->im', a, m1), b))  # (Kr, Kc)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        return rows[i], cols[j]

    # one pixel of slack beyond the allowed centres, so a blob on the wall is found (and judged)
    r, c = best(np.arange(lo[1] - 1, hi[1] + 1.01, 0.5), np.arange(lo[0] - 1, hi[0] + 1.01, 0.5))
    for step in (1 / 16, 1 / 128):                              # refine to 1/128 px
        around = np.arange(-8, 9) * step
        r, c = best(r + around, c + around)
    box = np.outer(_coverage(np.array([r - h / 2]), np.array([r + h / 2]), n)[0],
                   _coverage(np.array([c - w / 2]), np.array([c + w / 2]), n)[0])
    return box, r, c


def _blobs(mask: np.ndarray) -> np.ndarray:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[1]


def frame_validity(img: np.ndarray, cfg: Optional[WorldConfig] = None) -> tuple[bool, list[str]]:
    """(ok, reasons) for one (H, W, 3) uint8 RGB frame; ``cfg`` defaults to WorldConfig() at the
    frame's size. Reasons name what broke: robot/goal count, area, shape, position, walls, floor.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1] or img.dtype != np.uint8:
        return False, [f'not a square (S, S, 3) uint8 frame: {img.shape} {img.dtype}']
    n = img.shape[0]
    cfg = cfg or WorldConfig(image_size=n)
    if cfg.image_size != n:
        return False, [f'frame is {n} px, the world renders {cfg.image_size} px']
    static, wall_only = _static(json.dumps(cfg.to_dict(), sort_keys=True))
    x = img.astype(np.float64)
    robot_c = np.asarray(cfg.robot_color, np.float64)
    goal_c = np.asarray(cfg.goal_color, np.float64)

    # -- per-pixel unmixing: x - static = (goal - static) v + (robot - static) r -------------
    a, b, y = goal_c - static, robot_c - static, x - static    # (S, S, 3) each
    aa, ab, bb = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(-1)
    ay, by = (a * y).sum(-1), (b * y).sum(-1)
    det = np.maximum(aa * bb - ab * ab, 1e-9)
    v = np.clip((bb * ay - ab * by) / det, 0, 1)               # goal share g (1 - r)
    r = np.clip((aa * by - ab * ay) / det, 0, 1)               # robot coverage

    reasons: list[str] = []

    def judge(name, measured, fit, row, col, size_px, bounds, visible):
        lo, hi = bounds
        thr = max(0.1, 0.5 * fit.max())
        if name == 'goal':      # a robot across the goal can split it: count through the robot
            joined = _blobs((measured > thr) | (r > 0.5))
            count = len(np.unique(joined[measured > thr]))
        else:
            count = int(_blobs(measured > thr).max())
        area = float(measured.sum())
        if area < 0.25 * size_px[0] * size_px[1]:
            reasons.append(f'{name} missing')
            return
        if count > 1:
            reasons.append(f'{name} count: {count} blobs')
        want = float((fit * visible).sum())
        if abs(area - want) > AREA_TOL * want + 0.5:
            reasons.append(f'{name} area: {area:.1f} px, expected {want:.1f}')
        err = float(np.abs(measured - fit * visible).max())
        if err > SHAPE_TOL:
            reasons.append(f'{name} shape: not a {size_px[0]:.1f} x {size_px[1]:.1f} px '
                           f'rectangle (coverage error {err:.2f})')
        if not (lo[0] - 0.5 <= col <= hi[0] + 0.5 and lo[1] - 0.5 <= row <= hi[1] + 0.5):
            reasons.append(f'{name} position: outside the floor')

    size, bounds = _box(cfg, 'robot')
    r_fit, row, col = _fit_box(r, np.ones_like(r), size, bounds)
    judge('robot', r, r_fit, row, col, size, bounds, 1.0)
    visible = 1 - r                                            # the goal is drawn under the robot
    size, bounds = _box(cfg, 'goal')
    g_fit, row, col = _fit_box(v * visible, visible ** 2, size, bounds)
    judge('goal', v, g_fit, row, col, size, bounds, visible)

    # -- everything else must be the simulator's background -------------------------------
    rebuilt = (static * ((1 - g_fit) * (1 - r_fit))[..., None]
               + goal_c * (g_fit * (1 - r_fit))[..., None] + robot_c * r_fit[..., None])
    tol = np.full((n, n), PIXEL_TOL + 3.0 * cfg.noise_std)
    # Where a robot edge crosses a goal edge inside one pixel, a frame downscaled from a larger
    # render (INTER_AREA) mixes the two differently from a render at this size: allow more.
    crossing = ((r_fit > 0) & (r_fit < 1) & (g_fit > 0) & (g_fit < 1)).astype(np.uint8)
    tol[cv2.dilate(crossing, np.ones((3, 3), np.uint8)) > 0] += 48.0
    off = np.abs(x - rebuilt).max(-1)                          # (S, S)
    bad = off > tol
    if bad[wall_only].any():
        reasons.append(f'walls: {int(bad[wall_only].sum())} px are not wall colour')
    if bad[~wall_only].any():
        reasons.append(f'floor: {int(bad[~wall_only].sum())} px differ from the rendering '
                       f'(max {off[bad & ~wall_only].max():.0f}/255)')
    return not reasons, reasons


def _box(cfg: WorldConfig, which: str) -> tuple[tuple[float, float], tuple]:
    """Size (w, h) in pixels of the robot or goal rectangle, and its allowed centres as
    ((col, row) lowest, (col, row) highest) in pixels (image rows grow as y falls)."""
    size = cfg.robot_size if which == 'robot' else cfg.goal_size
    lo, hi = cfg.bounds(size)
    n, scale = cfg.image_size, cfg.image_size / cfg.room_size
    return ((size[0] * scale, size[1] * scale),
            (np.array([lo[0] * scale, n - hi[1] * scale]),
             np.array([hi[0] * scale, n - lo[1] * scale])))


def tally_reasons(reason_lists) -> dict[str, int]:
    """How many frames failed for each kind of reason ('robot count', 'floor', ...), most first."""
    counts: dict[str, int] = {}
    for reasons in reason_lists:
        for kind in {r.split(':')[0] for r in reasons}:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def validity_fraction(frames, cfg: Optional[WorldConfig] = None) -> tuple[float, dict]:
    """Share of (N, S, S, 3) uint8 frames that pass, and the tally of the others' reasons."""
    verdicts = [frame_validity(f, cfg) for f in frames]
    ok = float(np.mean([v[0] for v in verdicts])) if verdicts else 0.0
    return ok, tally_reasons(v[1] for v in verdicts)


__all__ = ['frame_validity', 'validity_fraction', 'tally_reasons', 'PIXEL_TOL']
