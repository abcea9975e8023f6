"""ROS-free 'onboard' world: the overhead room seen by a forward-facing camera on a
differential-drive robot (physics, reward, rendering and the oracle controller).

Coordinates as in ``world.py``: metres, origin at the room's lower-left corner, x to the right,
y up; ``heading`` is the robot's yaw in radians, counter-clockwise from +x, wrapped to
[-pi, pi). The room, its walls and the goal (a red block, at the room centre unless ``goal`` or
``random_goal``) are those of the overhead world.

Dynamics (one step of ``dt`` seconds, action = (v, w) = (linear.x m/s, angular.z rad/s), the
unicycle model of a differential-drive base):
    v, w    = clip(v, -max_speed, max_speed), clip(w, -max_turn_rate, max_turn_rate)
    mid     = heading + w dt / 2                            (midpoint rule: exact for w = 0)
    pos     = clip(pos + v dt (cos mid, sin mid), lo, hi)   (the robot's disc stays off the walls)
    heading = wrap(heading + w dt)                          (a wall stops the motion, not the turn)

Camera (``render``): pinhole at the robot centre, ``camera_height`` above the floor, looking
along ``heading`` with a horizontal field of view ``fov_deg``; square pixels, horizon at the
image's middle row (no pitch). One ray per image column is cast against the 4 walls and the
goal block; what it hits is drawn with perspective height (``wall_height``, ``goal_height``) and
exact vertical pixel coverage, so sub-pixel changes of distance stay visible. Each wall has its
own colour (heading is observable) with a vertical stripe pattern (sliding along a wall is
observable) and distance shading; floor and ceiling are vertical gradients. The robot itself is
not visible. Inside the goal's footprint the camera looks down on the block's top (it is lower
than the camera): the bottom of the frame turns red, as it does when the robot succeeds.

Reward: r = -||pos - goal||_2 / room_size, as in the overhead world.
Success: ||pos - goal||_2 <= success_radius.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from room_sim.world import ConfigDict, reward_of

ACTION_FIELDS = ('linear.x', 'angular.z')


def wrap_angle(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@dataclass
class OnboardConfig(ConfigDict):
    """Parameters of the onboard world (lengths in metres, times in seconds, angles as named)."""

    room_size: float = 2.0           # side of the square room, walls included
    wall: float = 0.1                # wall thickness (not enterable)
    dt: float = 0.1                  # simulated seconds per step
    max_speed: float = 0.5           # |linear.x| bound, m/s
    max_turn_rate: float = 3.0       # |angular.z| bound, rad/s
    robot_radius: float = 0.1        # the robot's disc: its centre stays this far from the walls
    goal_size: Sequence[float] = (0.2, 0.2)     # goal block footprint (x, y)
    goal_height: float = 0.15        # goal block height (below the camera: its top is seen)
    goal: Optional[Sequence[float]] = None      # fixed goal; None = room centre
    random_goal: bool = False        # draw a new goal every episode (overrides ``goal``)
    success_radius: float = 0.1      # robot centre within this distance of the goal centre
    image_size: int = 64             # square camera image, pixels
    fov_deg: float = 90.0            # horizontal (= vertical) field of view, degrees
    camera_height: float = 0.2       # above the floor
    wall_height: float = 0.5
    stripe_period: float = 0.25      # wall pattern: one bright and one dark band per period (m)
    noise_std: float = 0.0           # std of Gaussian pixel noise, in 0..255 units
    goal_color: Sequence[int] = (220, 20, 20)        # the block's sides; its top is lighter
    # inner faces of the walls at x = max (east), y = max (north), x = min (west), y = min (south)
    wall_colors: Sequence[Sequence[int]] = ((40, 170, 70), (50, 90, 210), (170, 70, 190),
                                            (215, 180, 50))
    floor_colors: Sequence[Sequence[int]] = ((45, 40, 35), (105, 95, 85))    # horizon, bottom
    ceiling_colors: Sequence[Sequence[int]] = ((225, 225, 230), (150, 150, 160))  # top, horizon

    def __post_init__(self):
        for name in ('room_size', 'dt', 'max_speed', 'max_turn_rate', 'camera_height',
                     'wall_height', 'goal_height', 'stripe_period'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.image_size < 8:
            raise ValueError(f'image_size must be >= 8, got {self.image_size}')
        if not 10.0 <= self.fov_deg <= 170.0:
            raise ValueError(f'fov_deg must be in [10, 170], got {self.fov_deg}')
        if self.robot_radius < 0 or 2 * (self.wall + self.robot_radius) >= self.room_size:
            raise ValueError('robot does not fit between the walls')
        if len(self.wall_colors) != 4:
            raise ValueError('wall_colors needs 4 colours (east, north, west, south)')

    @property
    def action_fields(self) -> tuple:
        return ACTION_FIELDS

    @property
    def action_limits(self) -> tuple:
        return (self.max_speed, self.max_turn_rate)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest robot centre (x, y) on the floor."""
        m = self.wall + self.robot_radius
        return np.full(2, m), np.full(2, self.room_size - m)

    def goal_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.asarray(self.goal_size, dtype=np.float64) / 2
        return self.wall + half, self.room_size - self.wall - half


def unicycle_step(pos: np.ndarray, heading: float, action: Sequence[float],
                  cfg: OnboardConfig) -> tuple[np.ndarray, float, np.ndarray]:
    """One ``dt`` of the module docstring's kinematics: (new pos, new heading, (v, w) used)."""
    v = float(np.clip(action[0], -cfg.max_speed, cfg.max_speed))
    w = float(np.clip(action[1], -cfg.max_turn_rate, cfg.max_turn_rate))
    mid = heading + w * cfg.dt / 2
    lo, hi = cfg.bounds()
    pos = np.clip(np.asarray(pos, dtype=np.float64)
                  + v * cfg.dt * np.array([math.cos(mid), math.sin(mid)]), lo, hi)
    return pos, float(wrap_angle(heading + w * cfg.dt)), np.array([v, w])


def oracle_drive(pos: np.ndarray, heading: float, goal: np.ndarray,
                 cfg: OnboardConfig) -> np.ndarray:
    """True-state reference controller: turn toward the goal as fast as allowed (without
    overshooting the bearing) while driving at up to max speed, scaled by how well the step's
    (midpoint) direction of motion points at the goal; no forward motion while it points away."""
    d = np.asarray(goal, dtype=np.float64) - np.asarray(pos, dtype=np.float64)
    dist = float(np.hypot(d[0], d[1]))
    if dist < 1e-9:
        return np.zeros(2)
    err = float(wrap_angle(math.atan2(d[1], d[0]) - heading))
    w = float(np.clip(err / cfg.dt, -cfg.max_turn_rate, cfg.max_turn_rate))
    err_mid = err - w * cfg.dt / 2                 # bearing error of the step's motion
    v = min(cfg.max_speed, dist / cfg.dt) * max(0.0, math.cos(err_mid))
    return np.array([v, w])


class OnboardWorld:
    """The onboard world. Deterministic given the seed passed to ``reset``."""

    def __init__(self, cfg: Optional[OnboardConfig] = None, seed: Optional[int] = None):
        self.cfg = cfg or OnboardConfig()
        self.rng = np.random.default_rng(seed)
        self.pos = np.full(2, self.cfg.room_size / 2)
        self.heading = 0.0
        self.velocity = np.zeros(2)        # (v, w) applied in the last step; zero after reset
        self.goal = self.cfg.default_goal()
        self.steps = 0
        self.episode = -1
        self._setup_camera()

    # -- episode control -------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None, start: Optional[Sequence[float]] = None,
              goal: Optional[Sequence[float]] = None) -> np.ndarray:
        """Start a new episode and return its frame. ``start`` = (x, y) (random heading) or
        (x, y, heading); unset = uniform over the floor, heading uniform."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        cfg = self.cfg
        lo, hi = cfg.bounds()
        glo, ghi = cfg.goal_bounds()
        if goal is not None:
            self.goal = np.clip(np.asarray(goal, dtype=np.float64), glo, ghi)
        elif cfg.random_goal:
            self.goal = self.rng.uniform(glo, ghi)
        else:
            self.goal = cfg.default_goal()
        if start is not None:
            s = np.asarray(start, dtype=np.float64).reshape(-1)
            if s.shape not in ((2,), (3,)) or not np.all(np.isfinite(s)):
                raise ValueError(f'start must be (x, y) or (x, y, heading), got {start!r}')
            self.pos = np.clip(s[:2], lo, hi)
            self.heading = float(wrap_angle(s[2])) if len(s) == 3 \
                else float(self.rng.uniform(-np.pi, np.pi))
        else:
            self.pos = self.rng.uniform(lo, hi)
            self.heading = float(self.rng.uniform(-np.pi, np.pi))
        self.velocity = np.zeros(2)
        self.steps = 0
        self.episode += 1
        return self.render()

    def step(self, action: Sequence[float]) -> tuple[np.ndarray, float, bool]:
        """Apply (v, w) for one ``dt``; return (frame, reward, success)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f'action must be 2 finite numbers (v, w), got {action!r}')
        self.pos, self.heading, self.velocity = unicycle_step(self.pos, self.heading, a,
                                                              self.cfg)
        self.steps += 1
        return self.render(), self.reward(), self.success()

    def reward(self) -> float:
        return reward_of(self.pos, self.goal, self.cfg)

    def success(self) -> bool:
        return bool(np.linalg.norm(self.pos - self.goal) <= self.cfg.success_radius)

    def oracle(self) -> np.ndarray:
        return oracle_drive(self.pos, self.heading, self.goal, self.cfg)

    def ground_truth(self) -> dict:
        return {'pos': self.pos.copy(), 'heading': self.heading, 'goal': self.goal.copy(),
                'steps': self.steps, 'episode': self.episode}

    # -- rendering -------------------------------------------------------------------------
    def _setup_camera(self) -> None:
        c, n = self.cfg, self.cfg.image_size
        self._f = (n / 2) / math.tan(math.radians(c.fov_deg) / 2)   # focal length, pixels
        centres = np.arange(n) + 0.5
        self._offsets = np.arctan((n / 2 - centres) / self._f)     # column 0 = leftmost ray
        self._cos_off = np.cos(self._offsets)
        self._rows = np.arange(n, dtype=np.float64)[:, None]       # pixel row i spans [i, i+1)
        self._wall_rgb = np.asarray(c.wall_colors, dtype=np.float64)
        self._goal_side = np.asarray(c.goal_color, dtype=np.float64)
        self._goal_top = self._goal_side + 0.35 * (255 - self._goal_side)
        # Background: a vertical gradient above (ceiling) and below (floor) the horizon.
        bg = np.empty((n, 3))
        half = n // 2
        t = np.linspace(0.0, 1.0, half)[:, None]
        (top, hor), (fhor, bottom) = (np.asarray(x, dtype=np.float64) for x in
                                      (c.ceiling_colors, c.floor_colors))
        bg[:half] = top * (1 - t) + hor * t
        t = np.linspace(0.0, 1.0, n - half)[:, None]
        bg[half:] = fhor * (1 - t) + bottom * t
        self._bg = np.broadcast_to(bg[:, None, :], (n, n, 3))

    def _coverage(self, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        """(H, W) fraction of each pixel row covered by the column's span [top, bottom]."""
        r = self._rows
        return np.clip(np.minimum(bottom, r + 1) - np.maximum(top, r), 0.0, 1.0)

    def render(self) -> np.ndarray:
        """The camera frame, (H, W, 3) uint8 RGB."""
        c, f, h2 = self.cfg, self._f, self.cfg.image_size / 2
        x, y = self.pos
        ang = self.heading + self._offsets
        dx, dy = np.cos(ang), np.sin(ang)
        dx = np.where(np.abs(dx) < 1e-12, 1e-12, dx)
        dy = np.where(np.abs(dy) < 1e-12, 1e-12, dy)
        ix, iy = 1.0 / dx, 1.0 / dy
        lo, hi = c.wall, c.room_size - c.wall
        # Walls: the nearer of the x-face and the y-face ahead of each ray.
        tx = np.where(dx > 0, hi - x, lo - x) * ix
        ty = np.where(dy > 0, hi - y, lo - y) * iy
        on_x = tx < ty
        t = np.where(on_x, tx, ty)
        which = np.where(on_x, np.where(dx > 0, 0, 2), np.where(dy > 0, 1, 3))
        u = np.where(on_x, y + t * dy, x + t * dx)                 # position along the wall
        shade = (0.82 + 0.18 * np.cos(2 * np.pi * u / c.stripe_period)) * np.exp(-0.2 * t)
        wall_rgb = self._wall_rgb[which] * shade[:, None]
        p = t * self._cos_off                                      # depth (along the heading)
        cov_wall = self._coverage(h2 - f * (c.wall_height - c.camera_height) / p,
                                  h2 + f * c.camera_height / p)
        img = self._bg + cov_wall[..., None] * (wall_rgb - self._bg)
        # Goal block: slab test against its footprint; it is always nearer than the walls.
        g0 = self.goal - np.asarray(c.goal_size) / 2
        g1 = self.goal + np.asarray(c.goal_size) / 2
        t1x, t2x = (g0[0] - x) * ix, (g1[0] - x) * ix
        t1y, t2y = (g0[1] - y) * iy, (g1[1] - y) * iy
        t_in = np.maximum(np.minimum(t1x, t2x), np.minimum(t1y, t2y))
        t_out = np.minimum(np.maximum(t1x, t2x), np.maximum(t1y, t2y))
        hit = t_out > np.maximum(t_in, 0.0)
        if hit.any():
            p_in = np.maximum(t_in, 1e-9) * self._cos_off
            p_out = np.maximum(t_out, 1e-9) * self._cos_off
            rise = c.goal_height - c.camera_height
            side_top = h2 - f * rise / p_in
            bottom = np.where(hit, h2 + f * c.camera_height / p_in, -1.0)
            side_top = np.where(hit, side_top, -1.0)
            cov_side = self._coverage(side_top, bottom)
            img = img + cov_side[..., None] * (self._goal_side - img)
            if rise < 0:                    # camera above the block: its top shows behind
                top_far = np.where(hit, h2 - f * rise / p_out, -1.0)
                cov_top = self._coverage(top_far, side_top)
                img = img + cov_top[..., None] * (self._goal_top - img)
        if c.noise_std > 0:
            img = img + self.rng.normal(0.0, c.noise_std, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


__all__ = ['OnboardConfig', 'OnboardWorld', 'oracle_drive', 'unicycle_step', 'wrap_angle',
           'ACTION_FIELDS']
