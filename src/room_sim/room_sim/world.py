"""ROS-free 2D room world: physics, reward, rendering and the oracle controller.

Coordinates: metres, origin at the room's lower-left corner, x to the right, y up. The room is a
square of side ``room_size`` whose outer ``wall`` metres are wall; the robot's rectangle always
stays inside the free floor. The camera looks straight down and sees the whole room: image column
grows with x, image row grows with *decreasing* y (row 0 is the top wall).

Dynamics (one step of ``dt`` seconds, action = commanded velocity (vx, vy) in m/s):
    v   = clip(action, -max_speed, max_speed)              (per axis: the action space is a box)
    pos = clip(pos + v * dt, lo, hi)                      (lo/hi keep the robot inside the walls)

Reward: r = -||pos - goal||_2 / room_size, so r is in [-sqrt(2)/2, 0] and 0 at the goal.
Success: ||pos - goal||_2 <= success_radius.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import numpy as np


class ConfigDict:
    """What every world's config dataclass shares: dict round trip (unknown keys refused)
    and the goal's default place."""

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f'unknown world parameters: {sorted(unknown)}')
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def default_goal(self) -> np.ndarray:
        if self.goal is not None:
            return np.asarray(self.goal, dtype=np.float64)
        return np.full(2, self.room_size / 2)


@dataclass
class WorldConfig(ConfigDict):
    """Parameters of the room (all lengths in metres, times in seconds)."""

    room_size: float = 2.0           # side of the square room, walls included
    wall: float = 0.1                # wall thickness (drawn, not enterable)
    dt: float = 0.1                  # simulated seconds per step
    max_speed: float = 0.5           # per-axis velocity bound, m/s
    robot_size: Sequence[float] = (0.2, 0.14)   # robot rectangle (width along x, height along y)
    goal_size: Sequence[float] = (0.2, 0.2)     # goal rectangle
    goal: Optional[Sequence[float]] = None      # fixed goal; None = room centre
    random_goal: bool = False        # draw a new goal every episode (overrides ``goal``)
    success_radius: float = 0.1      # robot centre within this distance of the goal centre
    image_size: int = 64             # square camera image, pixels
    noise_std: float = 0.0           # std of Gaussian pixel noise, in 0..255 units
    robot_color: Sequence[int] = (255, 255, 255)
    goal_color: Sequence[int] = (255, 0, 0)
    floor_color: Sequence[int] = (30, 30, 30)
    wall_color: Sequence[int] = (110, 110, 110)

    def __post_init__(self):
        if self.room_size <= 0 or self.dt <= 0 or self.max_speed <= 0:
            raise ValueError('room_size, dt and max_speed must be positive')
        if self.image_size < 8:
            raise ValueError(f'image_size must be >= 8, got {self.image_size}')
        if 2 * self.wall + max(self.robot_size) >= self.room_size:
            raise ValueError('robot does not fit between the walls')

    @property
    def action_fields(self) -> tuple:
        """The cmd_vel (Twist) fields that form the action."""
        return ('linear.x', 'linear.y')

    @property
    def action_limits(self) -> tuple:
        """Per-field bounds of the action (a box)."""
        return (self.max_speed, self.max_speed)

    def bounds(self, size: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest centre of a rectangle of ``size`` that stays on the floor."""
        half = np.asarray(size, dtype=np.float64) / 2
        return self.wall + half, self.room_size - self.wall - half


def reward_of(pos: np.ndarray, goal: np.ndarray, cfg: WorldConfig) -> float:
    """Negative goal distance, normalised by the room size (see module docstring)."""
    return -float(np.linalg.norm(np.asarray(pos) - np.asarray(goal))) / cfg.room_size


def oracle_action(pos: np.ndarray, goal: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """True-state reference controller: straight to the goal at max speed, no overshoot."""
    return np.clip((np.asarray(goal) - np.asarray(pos)) / cfg.dt, -cfg.max_speed, cfg.max_speed)


def _coverage(lo: float, hi: float, n: int) -> np.ndarray:
    """Fraction of each of ``n`` unit pixels [i, i+1) covered by the interval [lo, hi]."""
    edges = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(hi, edges + 1) - np.maximum(lo, edges), 0.0, 1.0)


class RoomWorld:
    """The simulated room. Deterministic given the seed passed to ``reset``."""

    def __init__(self, cfg: Optional[WorldConfig] = None, seed: Optional[int] = None):
        self.cfg = cfg or WorldConfig()
        self.rng = np.random.default_rng(seed)
        self.pos = np.full(2, self.cfg.room_size / 2)
        self.velocity = np.zeros(2)        # (vx, vy) applied in the last step; zero after reset
        self.goal = self.cfg.default_goal()
        self.steps = 0
        self.episode = -1
        self._static = self._render_static()

    # -- episode control -------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None, start: Optional[Sequence[float]] = None,
              goal: Optional[Sequence[float]] = None) -> np.ndarray:
        """Start a new episode (random start unless ``start`` is given) and return its frame."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        lo, hi = self.cfg.bounds(self.cfg.robot_size)
        glo, ghi = self.cfg.bounds(self.cfg.goal_size)
        if goal is not None:
            self.goal = np.clip(np.asarray(goal, dtype=np.float64), glo, ghi)
        elif self.cfg.random_goal:
            self.goal = self.rng.uniform(glo, ghi)
        else:
            self.goal = self.cfg.default_goal()
        if start is not None:
            self.pos = np.clip(np.asarray(start, dtype=np.float64), lo, hi)
        else:
            self.pos = self.rng.uniform(lo, hi)
        self.velocity = np.zeros(2)
        self.steps = 0
        self.episode += 1
        return self.render()

    def step(self, action: Sequence[float]) -> tuple[np.ndarray, float, bool]:
        """Apply velocity ``action`` for one ``dt``; return (frame, reward, success)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f'action must be 2 finite numbers (vx, vy), got {action!r}')
        v = np.clip(a, -self.cfg.max_speed, self.cfg.max_speed)
        lo, hi = self.cfg.bounds(self.cfg.robot_size)
        self.pos = np.clip(self.pos + v * self.cfg.dt, lo, hi)
        self.velocity = v
        self.steps += 1
        return self.render(), self.reward(), self.success()

    def reward(self) -> float:
        return reward_of(self.pos, self.goal, self.cfg)

    def success(self) -> bool:
        return bool(np.linalg.norm(self.pos - self.goal) <= self.cfg.success_radius)

    def oracle(self) -> np.ndarray:
        return oracle_action(self.pos, self.goal, self.cfg)

    # -- rendering -------------------------------------------------------------------------
    def to_pixels(self, xy: Sequence[float]) -> np.ndarray:
        """(x, y) in metres -> (column, row) in continuous pixel units."""
        s = self.cfg.image_size / self.cfg.room_size
        return np.array([xy[0] * s, (self.cfg.room_size - xy[1]) * s])

    def _render_static(self) -> np.ndarray:
        n, c = self.cfg.image_size, self.cfg
        img = np.empty((n, n, 3), dtype=np.float64)
        img[:] = c.wall_color
        w = c.wall * n / c.room_size
        cover = np.outer(_coverage(w, n - w, n), _coverage(w, n - w, n))[..., None]
        return img * (1 - cover) + np.asarray(c.floor_color, dtype=np.float64) * cover

    def _paint(self, img: np.ndarray, centre: np.ndarray, size: Sequence[float], color) -> None:
        # Exact area coverage per pixel (separable for axis-aligned boxes): sub-pixel motion
        # stays visible, which the world model needs at 1.6 px per max-speed step.
        n, s = self.cfg.image_size, self.cfg.image_size / self.cfg.room_size
        col, row = self.to_pixels(centre)
        hw, hh = size[0] * s / 2, size[1] * s / 2
        cover = np.outer(_coverage(row - hh, row + hh, n), _coverage(col - hw, col + hw, n))
        img *= 1 - cover[..., None]
        img += cover[..., None] * np.asarray(color, dtype=np.float64)

    def render(self) -> np.ndarray:
        """The camera frame, (H, W, 3) uint8 RGB."""
        img = self._static.copy()
        self._paint(img, self.goal, self.cfg.goal_size, self.cfg.goal_color)
        self._paint(img, self.pos, self.cfg.robot_size, self.cfg.robot_color)
        if self.cfg.noise_std > 0:
            img += self.rng.normal(0.0, self.cfg.noise_std, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def ground_truth(self) -> dict:
        return {'pos': self.pos.copy(), 'goal': self.goal.copy(), 'steps': self.steps,
                'episode': self.episode}


__all__ = ['WorldConfig', 'RoomWorld', 'reward_of', 'oracle_action']
