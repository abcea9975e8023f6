"""Goal images: the learned goal head against the latent distance it replaced, same episodes.

    .venv/bin/python bench/bench_goal_distance.py --seeds 41 --episodes 30 \
        --json docs/bench/goal_distance.json

Both run `wmc eval --no-ros --goal-image`'s episodes (the same starts and goals per seed): once
with the planner's `goal_image` objective (the goal head in the checkpoint), once scoring
imagined states by the Euclidean distance between their latent means and the goal image's
one-frame belief (the issue's first measurement).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402

import world_model_ctrl.offline_loop as ol  # noqa: E402
from world_model_ctrl.goal import one_frame_belief  # noqa: E402

KEYS = ('success_rate', 'mean_steps', 'oracle_mean_steps', 'steps_ratio_vs_oracle',
        'random_success_rate', 'plan_ms_p50', 'plan_ms_p99')


class LatentAgent(ol.Agent):
    """The ROS-free agent scoring plans by latent Euclidean distance to the goal's belief."""

    def set_goal_image(self, image):
        with torch.no_grad():
            goal = one_frame_belief(self.model, image[None])[0]
        model = self.model
        self.rollout = lambda z0, a: -(model.imagine(z0, a, sample=False) - goal).norm(dim=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', default='41')
    ap.add_argument('--episodes', type=int, default=30)
    ap.add_argument('--world', default='overhead')
    ap.add_argument('--ckpt')
    ap.add_argument('--json')
    a = ap.parse_args()
    report = {'machine': machine_info(), 'episodes': a.episodes, 'world': a.world, 'runs': []}
    head_agent = ol.Agent
    for seed in (int(s) for s in a.seeds.split(',')):
        for name, agent in (('goal head', head_agent), ('latent euclidean', LatentAgent)):
            ol.Agent = agent
            s = ol.run_offline(a.ckpt, a.episodes, seed, world=a.world, goal_image=True,
                               progress=False)
            report['runs'].append({'seed': seed, 'distance': name,
                                   **{k: s.get(k) for k in KEYS}})
            print(f"seed {seed} {name}: success {s['success_rate']:.2f}", file=sys.stderr)
    ol.Agent = head_agent
    print(write_report(report, a.json))


if __name__ == '__main__':
    main()
