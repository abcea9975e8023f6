"""The two simulated worlds and what each brings: sim params, control params, shipped model.

``overhead``: the original room seen from above, holonomic (linear.x, linear.y).
``onboard``: the same room seen by a forward camera on a differential-drive robot
(linear.x, angular.z). One switch (``--world`` / ``world:=``) picks all of it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    name: str
    sim_params: str          # config/<file>: room_sim's parameters
    control_params: str      # config/<file>: belief, planner, image_monitor
    checkpoint: str          # models/<file>: the shipped world model ('shipped')
    action_fields: tuple     # the command fields its actions are made of


WORLDS = {
    'overhead': World('overhead', 'sim.yaml', 'control.yaml', 'ssm.pt',
                      ('linear.x', 'linear.y')),
    'onboard': World('onboard', 'sim_onboard.yaml', 'control_onboard.yaml', 'ssm_onboard.pt',
                     ('linear.x', 'angular.z')),
}


def get_world(name: str) -> World:
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {name!r}") from None
