"""The worlds room_sim can simulate, by name: 'overhead' (world.py) and 'onboard' (onboard.py)."""
from __future__ import annotations

from typing import Optional

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


__all__ = ['WORLDS', 'world_config', 'make_world']
