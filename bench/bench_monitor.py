"""Cost of the image monitor: one OOD score of a 64x64 frame with the shipped prior -> JSON.

    .venv/bin/python bench/bench_monitor.py --json out/monitor_cost.json
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402

from room_sim.world import RoomWorld  # noqa: E402
from world_model_ctrl.diffusion import PriorModel  # noqa: E402
from world_model_ctrl.paths import resolve_checkpoint  # noqa: E402
from world_model_ctrl.ssm import images_to_tensor  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--ckpt', default='shipped')
    ap.add_argument('--threads', type=int, default=1, help='as the node runs (threads: 1)')
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--json')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = PriorModel.from_checkpoint(resolve_checkpoint(a.ckpt, 'prior.pt'))
    x = images_to_tensor(RoomWorld(seed=0).reset()[None])
    times = []
    with torch.no_grad():
        for i in range(a.runs + 5):
            t0 = time.perf_counter()
            model.ood_score(x)
            if i >= 5:                                  # 5 warm-up calls
                times.append((time.perf_counter() - t0) * 1e3)
    out = {'benchmark': 'image_monitor: PriorModel.ood_score, one 64x64 frame',
           'machine': machine_info(), 'threads': a.threads, 'runs': a.runs,
           'ood_score_ms_p50': float(np.percentile(times, 50)),
           'ood_score_ms_p99': float(np.percentile(times, 99))}
    print(write_report(out, a.json))


if __name__ == '__main__':
    main()
