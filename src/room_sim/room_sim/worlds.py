"""The worlds room_sim can simulate, by name: 'overhead' (world.py) and 'onboard' (onboard.py)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from room_sim.onboard import OnboardConfig, OnboardWorld
from room_sim.world import RoomWorld, WorldConfig

WORLDS = {'overhead': (WorldConfig, RoomWorld), 'onboard': (OnboardConfig, OnboardWorld)}


def world_config(name: str, params: Optional[dict] = None):
    """The config of world ``name`` from a dict of its fields (unknown fields are refused)."""
    if name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {name!r}")
    return WORLDS[name][0].from_dict(dict(params or {}))


def make_world(name: str, params: Optional[dict] = None, seed: Optional[int] = None):
    """A world by name: ``make_world('onboard', {'max_turn_rate': 2.0}, seed=0)``."""
    cfg = world_config(name, params)
    return WORLDS[name][1](cfg, seed=seed)


def view_at(name: str, pose, params: Optional[dict] = None, goal=None) -> np.ndarray:
    """The camera frame (H x W x 3 uint8 RGB) of world ``name`` with the robot standing at
    ``pose``: [x, y] m (overhead), [x, y, heading] m, m, rad (onboard), the goal marker where the
    world's config (or ``goal``, [x, y]) puts it: the picture a goal image is made from
    (issue 14). A pose off the floor is refused, not clipped."""
    cfg = world_config(name, params)
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    size = 3 if name == 'onboard' else 2
    if pose.shape != (size,) or not np.all(np.isfinite(pose)):
        raise ValueError(f'the {name} world needs a pose of {size} finite numbers '
                         f'({"x y heading" if size == 3 else "x y"}), got {pose.tolist()}')
    lo, hi = cfg.bounds() if name == 'onboard' else cfg.bounds(cfg.robot_size)
    if np.any(pose[:2] < lo) or np.any(pose[:2] > hi):
        raise ValueError(f'({pose[0]:g}, {pose[1]:g}) is off the floor: the robot centre must '
                         f'be within x, y in [{lo[0]:g}, {hi[0]:g}] x [{lo[1]:g}, {hi[1]:g}] m')
    world = WORLDS[name][1](cfg, seed=0)
    return world.reset(start=pose, goal=goal)


__all__ = ['WORLDS', 'world_config', 'make_world', 'view_at']
