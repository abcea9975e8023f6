"""How much of the onboard world each exploration policy shows the camera -> JSON.

    .venv/bin/python bench/bench_explore.py --json docs/bench/explore_coverage.json

Per policy, ``--episodes`` x ``--steps`` from seeded random starts (ROS-free OnboardWorld):
headings seen per episode (8 bins of 45 deg), floor cells (4 x 4) and cell x heading pairs
visited over all episodes, the fraction of frames with the goal block in view, and of steps
with the robot against a wall. tests/test_drive_policies.py asserts bounds on the same numbers.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402

from room_sim.onboard import OnboardConfig, OnboardWorld  # noqa: E402
from world_model_ctrl.policies import DRIVE_POLICIES, make_policy  # noqa: E402


def goal_in_view(img) -> bool:
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return bool(((r > 150) & (r - g > 60) & (r - b > 60)).any())


def coverage(name: str, episodes: int, steps: int, seed: int = 1) -> dict:
    world = OnboardWorld(OnboardConfig(), seed=0)
    policy = make_policy(name, seed=seed, world='onboard', limits=world.cfg.action_limits,
                         dt=world.cfg.dt)
    lo, hi = world.cfg.bounds()
    bins_per_episode, cells, pairs, seen, at_wall = [], set(), set(), [], []
    for _ in range(episodes):
        world.reset()
        policy.reset()
        bins = set()
        for _ in range(steps):
            frame, _, _ = world.step(policy.act(world.pos, world.goal, world.heading))
            b = int((world.heading + math.pi) // (math.pi / 4)) % 8
            cell = tuple(np.minimum((world.pos - lo) / (hi - lo) * 4, 3).astype(int))
            bins.add(b)
            cells.add(cell)
            pairs.add((cell, b))
            seen.append(goal_in_view(frame))
            at_wall.append(bool(np.any(np.isclose(world.pos, lo) | np.isclose(world.pos, hi))))
        bins_per_episode.append(len(bins))
    return {'headings_per_episode_mean': round(float(np.mean(bins_per_episode)), 2),
            'headings_per_episode_min': int(np.min(bins_per_episode)),
            'floor_cells': len(cells), 'cell_heading_pairs': len(pairs),
            'goal_in_view_fraction': round(float(np.mean(seen)), 3),
            'at_wall_fraction': round(float(np.mean(at_wall)), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--episodes', type=int, default=40)
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--json')
    a = ap.parse_args()
    out = {'benchmark': 'onboard exploration coverage (8 heading bins, 4x4 floor cells, '
                        '128 cell x heading pairs)',
           'machine': machine_info(), 'episodes': a.episodes, 'steps': a.steps,
           'policies': {name: coverage(name, a.episodes, a.steps) for name in DRIVE_POLICIES}}
    print(write_report(out, a.json))


if __name__ == '__main__':
    main()
