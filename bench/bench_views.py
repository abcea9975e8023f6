"""What the optional views cost: belief/reconstruction and planner/imagined, per image.

    .venv/bin/python bench/bench_views.py --json docs/bench/views.json

Times what ImageView.publish does before the middleware takes over (decode with the shipped
model, convert to uint8, build the rgb8 message), one torch thread as the nodes run, and puts it
beside what the nodes do anyway per frame and per plan (one filter step, one CEM plan with the
config/control.yaml settings), so the share of the CPU a view takes at its rate is plain.
"""
import argparse
import statistics
import time

import torch
from std_msgs.msg import Header

from machine import machine_info, write_report  # bench/ is the script's folder

from room_sim.world import RoomWorld
from world_model_ctrl.cem import CEMConfig, CEMPlanner
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.planner import CEM_PARAMS
from world_model_ctrl.ssm import WorldModel, images_to_tensor
from world_model_ctrl.views import imagined, reconstruction, rgb8_msg


def timed(fn, reps: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    return {'median_ms': statistics.median(ms), 'p90_ms': ms[int(0.9 * (len(ms) - 1))],
            'max_ms': ms[-1], 'reps': reps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=200)
    ap.add_argument('--json', help='write the report here too')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = resolve_checkpoint('shipped', 'ssm.pt')
    model = WorldModel.from_checkpoint(ckpt)
    x = images_to_tensor(RoomWorld(seed=0).reset(start=(0.5, 0.5))[None])      # (1, 3, S, S)
    no_action = torch.zeros(1, model.config.action_dim)
    with torch.no_grad():
        _, mean, std = model.step(None, x, no_action)
    mean, std = mean[0], std[0]
    cfg = CEMConfig(**CEM_PARAMS, device='cpu')
    cem = CEMPlanner(cfg, generator=torch.Generator().manual_seed(0))

    def rollout(z0, act):
        return model.imagine_rewards(z0, act, sample=False)

    def plan():
        with torch.no_grad():
            return cem.plan(rollout, mean, std)

    plan_mean = plan().plan_mean                                              # (H, A)
    header = Header()

    def filter_step():
        with torch.no_grad():
            model.step(None, x, no_action)
    rows = {
        'reconstruction': timed(lambda: rgb8_msg(reconstruction(model, mean), header), a.reps),
        'imagined': timed(lambda: rgb8_msg(imagined(model, mean, plan_mean), header), a.reps),
        'belief_filter_step': timed(filter_step, a.reps),
        'cem_plan': timed(plan, max(20, a.reps // 5)),
    }
    report = {'what': 'ms per image of each view (decode + uint8 + rgb8 message), beside a '
                      'filter step and a CEM plan; shipped model, 1 torch thread',
              'checkpoint': str(ckpt), 'horizon': cfg.horizon,
              'imagined_size': [model.config.image_size, cfg.horizon * model.config.image_size],
              'cem': CEM_PARAMS, 'results': rows, 'machine': machine_info()}
    print(write_report(report, a.json))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
