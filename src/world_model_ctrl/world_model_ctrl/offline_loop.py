"""`wmc eval --no-ros`: the lockstep closed loop without ROS, for quick model checks.

The same pieces the nodes run, called directly: the world renders a frame, the filter
(``WorldModel.step``, as the belief node) updates the belief with the command that led to it,
CEM (as the planner node, same parameters from the control params file) picks the command,
the world applies it. Starts come from the sim's seeded RNG in the same order as over ROS
(`closed_loop.baseline` does the same for the oracle), so the episodes are those of
`wmc eval` in lockstep; only the transport is missing. Deterministic for a given seed: the
CEM generator is seeded once (the planner's ``seed`` parameter) and runs on one thread.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import yaml

from room_sim.worlds import make_world, world_config
from world_model_ctrl.actions import resolve_limits, trained_spec
from world_model_ctrl.paths import config_file, resolve_checkpoint
from world_model_ctrl.ssm import WorldModel, images_to_tensor
from world_model_ctrl.worlds import get_world


def planner_params(params_file=None, world: str = 'overhead') -> dict:
    """The planner's ros__parameters from a control params file (default: the world's)."""
    path = Path(params_file or config_file(get_world(world).control_params))
    doc = yaml.safe_load(path.read_text()) or {}
    for key in ('/**/planner', 'planner', '/planner'):
        if key in doc:
            return dict(doc[key].get('ros__parameters', {}))
    return {}


class Agent:
    """The belief node's filter and the planner node's CEM, called directly (one CPU thread).

    ``act(frame)`` filters ``frame`` with the command that led to it and plans the next one;
    ``applied(action)`` records a command other than the plan (e.g. with exploration noise)
    as the one the world received.
    """

    def __init__(self, ckpt=None, world: str = 'overhead', params_file=None,
                 overrides: dict | None = None):
        from world_model_ctrl.planner import cem_planner
        self.path = resolve_checkpoint(ckpt or 'shipped', get_world(world).checkpoint)
        self.model = WorldModel.from_checkpoint(self.path, device='cpu').eval()
        self.params = {**planner_params(params_file, world), **(overrides or {})}
        spec = trained_spec(self.model.checkpoint_extra)
        self.fields = self.params.get('action_fields') or spec['fields']
        self.high = resolve_limits(self.fields, self.params.get('action_limits') or [], spec,
                                   self.path)
        self.planner = cem_planner(self.params, self.high, 'cpu')
        self.sample = bool(self.params.get('sample_transitions', False))
        self.rollout = lambda z0, a: self.model.imagine_rewards(z0, a, sample=self.sample)
        self.goal_head = None
        self.goal = None                # goal_image: the goal embedding, updated in place
        self.compile = bool(self.params.get('compile', True))
        self.search = 'eager search (compile: false)'     # what planned: the log line
        self.plan_ms: list[float] = []
        self.reset()

    def set_goal_image(self, image: np.ndarray) -> None:
        """Plan toward ``image`` (H x W x 3 uint8 at the model's size) from now on
        (objective goal_image, goal.py) instead of by the reward head."""
        from world_model_ctrl.goal import GoalHead, goal_embedding, goal_scores
        if self.goal_head is None:
            self.goal_head = GoalHead.from_model(self.model, self.path)
        g = goal_embedding(self.model, self.goal_head, image[None])[0]
        if self.goal is None:       # one score function for every goal: compiled once
            self.goal = g.clone()
            self.rollout = goal_scores(self.model, self.goal_head, self.goal, sample=self.sample)
        self.goal.copy_(g)

    def reset(self, episode: int | None = None) -> None:
        """A new episode: no filter state, no command yet, no warm start; with the sim's
        ``episode`` number, CEM's generator restarts as the planner node's does."""
        from world_model_ctrl.planner import episode_seed
        self.planner.reset(None if episode is None else
                           episode_seed(int(self.params.get('seed', 0)), episode))
        self.h, self.last = None, torch.zeros(1, self.model.config.action_dim)

    @torch.no_grad()
    def act(self, frame: np.ndarray) -> np.ndarray:
        self.h, mean, std = self.model.step(self.h, images_to_tensor(frame[None]), self.last)
        if self.compile and (self.planner.compiled is None
                             or self.planner.compiled[0] is not self.rollout):
            self.search = self.planner.compile(self.rollout, self.model.config.latent_dim)
        t0 = time.perf_counter()
        action = self.planner.plan(self.rollout, mean[0], std[0]).action
        self.plan_ms.append((time.perf_counter() - t0) * 1e3)
        self.last = action.reshape(1, -1).float()
        return action.double().numpy()

    def applied(self, action: np.ndarray) -> None:
        self.last = torch.as_tensor(action, dtype=torch.float32).reshape(1, -1)


def goal_rng(seed: int) -> np.random.Generator:
    """Where `wmc eval --goal-image` puts each episode's goal: its own stream, so the starts
    stay those of the sim's seeded RNG (the same as without goal images)."""
    return np.random.default_rng([int(seed), 14])


def draw_goal(world: str, cfg, rng: np.random.Generator) -> np.ndarray:
    """A goal pose uniform over the floor: [x, y] (overhead), [x, y, heading] (onboard)."""
    if world == 'onboard':
        lo, hi = cfg.bounds()
        return np.concatenate([rng.uniform(lo, hi), [rng.uniform(-np.pi, np.pi)]])
    lo, hi = cfg.bounds(cfg.robot_size)
    return rng.uniform(lo, hi)


@torch.no_grad()
def run_offline(ckpt=None, episodes: int = 20, seed: int = 0, max_steps: int = 100,
                world: str = 'overhead', params_file=None, overrides: dict | None = None,
                start=None, progress: bool = True, goal_image: bool = False) -> dict:
    """Lockstep episodes from the sim's seeded starts; the same summary keys as `wmc eval`.
    ``goal_image``: each episode gets a random goal pose (``draw_goal``) and the planner its
    view (``view_at``) instead of the reward; success is reaching that goal's position."""
    from room_sim.worlds import view_at
    from tqdm import tqdm

    from world_model_ctrl.closed_loop import baseline
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    agent = Agent(ckpt, world, params_file, overrides)
    cfg = world_config(world)
    sim = make_world(world, cfg.to_dict(), seed=seed)
    sim.reset(start=start)                             # the sim's start-up reset
    results, t_start = [], time.monotonic()
    goals = []
    rng = goal_rng(seed)
    bar = tqdm(range(episodes), desc='eval (no ROS)', unit='ep', disable=not progress)
    for _ in bar:
        frame = sim.reset(start=start)
        agent.reset(sim.episode)
        if goal_image:
            goals.append(draw_goal(world, cfg, rng))
            agent.set_goal_image(view_at(world, goals[-1], cfg.to_dict()))
        target = np.asarray(goals[-1][:2]) if goal_image else sim.goal
        track, outcome = [sim.pos.copy()], None
        for t in range(max_steps + 1):
            if np.linalg.norm(sim.pos - target) <= cfg.success_radius:
                outcome = (True, t)
                break
            if t == max_steps:
                outcome = (False, max_steps)
                break
            frame, _, _ = sim.step(agent.act(frame))
            track.append(sim.pos.copy())
        results.append({'success': outcome[0], 'steps': outcome[1], 'track': np.array(track)})
        bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
    ok = [r['steps'] for r in results if r['success']]
    oracle, rand = (baseline(policy, episodes, seed, max_steps, cfg, start, world,
                             goals=goals if goal_image else None)
                    for policy in ('oracle', 'random'))
    plan_ms = agent.plan_ms
    ms = np.array(plan_ms) if plan_ms else np.array([np.nan])
    summary = {
        'episodes': episodes, 'seed': seed, 'max_steps': max_steps, 'mode': 'lockstep-no-ros',
        'device': 'cpu', 'world': world, 'checkpoint': str(ckpt or 'shipped'),
        'planner_overrides': dict(overrides or {}), 'search': agent.search,
        'objective': 'goal_image' if goal_image else 'reward',
        'success_rate': float(np.mean([r['success'] for r in results])),
        'mean_steps': float(np.mean(ok)) if ok else None,
        'oracle_success_rate': oracle['success_rate'], 'oracle_mean_steps': oracle['mean_steps'],
        'random_success_rate': rand['success_rate'], 'random_mean_steps': rand['mean_steps'],
        'plan_ms_p50': float(np.percentile(ms, 50)), 'plan_ms_p99': float(np.percentile(ms, 99)),
        'plan_ms_max': float(np.max(ms)), 'plans': len(plan_ms),
        'control_period_ms': 1000.0 * cfg.dt,
        'wall_s': round(time.monotonic() - t_start, 1),
        'per_episode': [{'success': r['success'], 'steps': r['steps'],
                         'oracle_steps': (oracle['steps'][i] if i < len(oracle['steps'])
                                          else None),
                         'start': [float(v) for v in r['track'][0]],
                         **({'goal': [float(v) for v in goals[i][:2]]} if goal_image else {})}
                        for i, r in enumerate(results)],
    }
    if summary['mean_steps'] and oracle['mean_steps']:
        summary['steps_ratio_vs_oracle'] = summary['mean_steps'] / oracle['mean_steps']
    if goal_image:      # the same episodes: a ratio over the ones both reached
        pairs = [(p['steps'], p['oracle_steps']) for p in summary['per_episode']
                 if p['success'] and p['oracle_steps']]
        summary['steps_ratio_paired'] = (float(np.mean([a / b for a, b in pairs]))
                                         if pairs else None)
    return summary
