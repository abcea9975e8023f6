"""Frames per second of both room_sim worlds' renderers (and of a full step), plus the oracle's
steps to the goal, -> JSON.

    .venv/bin/python bench/bench_render.py --json docs/bench/render.json \
        --strip docs/img/onboard_views.png

A frame is one ``render()`` call (64x64 RGB, uint8) from poses that change every frame, so no
cache can help; a step is ``step(action)`` = physics + render. Oracle steps: the true-state
controller from ``--oracle-starts`` seeded random starts (heading too, for onboard) to success.
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402

from room_sim.onboard import OnboardConfig, OnboardWorld  # noqa: E402
from room_sim.world import RoomWorld, WorldConfig  # noqa: E402


def make(name: str, image_size: int):
    if name == 'overhead':
        return RoomWorld(WorldConfig(image_size=image_size), seed=0)
    return OnboardWorld(OnboardConfig(image_size=image_size), seed=0)


def fps(world, frames: int, step: bool) -> float:
    """Frames per second over ``frames`` renders (or steps) along a random-pose sequence."""
    rng = np.random.default_rng(0)
    world.reset(seed=0)
    actions = rng.uniform(-0.5, 0.5, (frames, 2))
    t0 = time.perf_counter()
    for i in range(frames):
        if step:
            world.step(actions[i])
        else:
            world.pos = world.pos + actions[i] * 0.01       # stays on the floor: small moves
            if hasattr(world, 'heading'):
                world.heading = float(world.heading + actions[i, 1])
            world.render()
    return frames / (time.perf_counter() - t0)


def oracle_steps(world, starts: int, limit: int = 500) -> list:
    steps = []
    for seed in range(starts):
        world.reset(seed=seed)
        n = 0
        while not world.success() and n < limit:
            world.step(world.oracle())
            n += 1
        steps.append(n)
    return steps


# (x, y, heading) poses for the picture of the onboard camera in docs/sim.md
STRIP_POSES = [(0.3, 0.3, 0.0), (0.3, 0.3, math.pi / 4), (0.3, 0.3, math.pi / 2),
               (1.0, 0.5, -math.pi / 2), (1.7, 1.7, -3 * math.pi / 4), (0.5, 1.5, -0.5),
               (1.0, 0.75, math.pi / 2), (1.0, 1.0, 0.3)]


def save_strip(path: str, scale: int = 2) -> None:
    """Onboard frames from STRIP_POSES side by side, each enlarged ``scale`` times (PNG)."""
    import cv2
    world = OnboardWorld(OnboardConfig(), seed=0)
    strip = np.concatenate([world.reset(start=p) for p in STRIP_POSES], axis=1)
    strip = np.repeat(np.repeat(strip, scale, 0), scale, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), strip[..., ::-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--frames', type=int, default=3000)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--image-size', type=int, default=64)
    ap.add_argument('--oracle-starts', type=int, default=50)
    ap.add_argument('--json')
    ap.add_argument('--strip', help='also save a PNG of onboard camera frames here')
    a = ap.parse_args()
    if a.strip:
        save_strip(a.strip)
    out = {'benchmark': f'room_sim render/step frames per second ({a.image_size}x'
                        f'{a.image_size} RGB, one process, numpy)',
           'machine': machine_info(), 'frames_per_run': a.frames, 'runs': a.runs,
           'target_collect_steps_per_s': 300, 'worlds': {}}
    for name in ('overhead', 'onboard'):
        w = make(name, a.image_size)
        render = [fps(w, a.frames, step=False) for _ in range(a.runs)]
        step = [fps(w, a.frames, step=True) for _ in range(a.runs)]
        steps = oracle_steps(make(name, a.image_size), a.oracle_starts)
        out['worlds'][name] = {
            'render_fps_median': round(statistics.median(render), 1),
            'render_fps_runs': [round(x, 1) for x in render],
            'step_fps_median': round(statistics.median(step), 1),
            'step_fps_runs': [round(x, 1) for x in step],
            'oracle_starts': a.oracle_starts,
            'oracle_steps_mean': round(float(np.mean(steps)), 2),
            'oracle_steps_median': float(np.median(steps)),
            'oracle_steps_max': int(np.max(steps)),
            'config': w.cfg.to_dict()}
        print(f"{name}: render {statistics.median(render):.0f} fps, step "
              f"{statistics.median(step):.0f} fps, oracle {np.mean(steps):.2f} steps "
              f"(max {np.max(steps)})", file=sys.stderr)
    print(write_report(out, a.json))


if __name__ == '__main__':
    main()
