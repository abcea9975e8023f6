"""`wmc collect-planner`: the planner's own episodes (plus exploration noise) into a new bag.

Data aggregation as in PlaNet (Hafner et al., 2019): episodes driven by CEM over the current
model, with Gaussian noise (``noise`` x each field's limit) added to every command, show the
model the states its planner actually reaches, which exploration data covers thinly. ROS-free
and in lockstep, like `wmc eval --no-ros` (the same filter, planner and parameters): the world
renders a frame, the planner answers, the world steps. The bag holds what `wmc collect` records
(camera, commands, reward, episode markers, ground-truth pose) with the same timing pattern
(reward just before its frame, the command after it), so `wmc train-ssm` reads both alike.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from room_sim.worlds import make_world, world_config
from world_model_ctrl.bag_writer import BagWriter
from world_model_ctrl.offline_loop import Agent
from world_model_ctrl.planner import add_exploration, episode_seed, exploration_rng

TOPICS = {
    '/camera/image_raw': 'sensor_msgs/msg/Image',
    '/reward': 'std_msgs/msg/Float32',
    '/cmd_vel': 'geometry_msgs/msg/Twist',
    '/room_sim/episode_start': 'std_msgs/msg/Header',
    '/room_sim/pose': 'geometry_msgs/msg/PoseStamped',
}
LOG_T0 = 1_700_000_000 * 10**9      # log time of the first frame, ns (a fixed, plausible epoch)
GAP_STEPS = 5                       # idle periods between episodes (the sim's reset)


class _Msgs:
    """The few messages written here, serialised with the bag's own typestore."""

    def __init__(self, writer: BagWriter):
        self.w, self.ts = writer, writer.typestore
        self.t = writer.typestore.types

    def _header(self, stamp_ns: int, frame_id: str):
        stamp = self.t['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                      nanosec=stamp_ns % 10**9)
        return self.t['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)

    def put(self, topic: str, log_ns: int, msg) -> None:
        self.w.write(topic, log_ns, self.ts.serialize_cdr(msg, TOPICS[topic]))

    def image(self, log_ns: int, stamp_ns: int, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        self.put('/camera/image_raw', log_ns, self.t['sensor_msgs/msg/Image'](
            header=self._header(stamp_ns, 'camera'), height=h, width=w, encoding='rgb8',
            is_bigendian=0, step=3 * w, data=np.ascontiguousarray(rgb, np.uint8).reshape(-1)))

    def reward(self, log_ns: int, value: float) -> None:
        self.put('/reward', log_ns, self.t['std_msgs/msg/Float32'](data=float(value)))

    def cmd(self, log_ns: int, fields, values) -> None:
        v3 = self.t['geometry_msgs/msg/Vector3']
        lin, ang = v3(x=0.0, y=0.0, z=0.0), v3(x=0.0, y=0.0, z=0.0)
        for name, value in zip(fields, values):
            part, axis = name.split('.')
            setattr(lin if part == 'linear' else ang, axis, float(value))
        self.put('/cmd_vel', log_ns, self.t['geometry_msgs/msg/Twist'](linear=lin, angular=ang))

    def marker(self, log_ns: int, stamp_ns: int, index: int) -> None:
        self.put('/room_sim/episode_start', log_ns, self._header(stamp_ns, str(index)))

    def pose(self, log_ns: int, stamp_ns: int, xy, heading: float) -> None:
        t = self.t
        q = t['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=float(np.sin(heading / 2)),
                                              w=float(np.cos(heading / 2)))
        p = t['geometry_msgs/msg/Point'](x=float(xy[0]), y=float(xy[1]), z=0.0)
        self.put('/room_sim/pose', log_ns, t['geometry_msgs/msg/PoseStamped'](
            header=self._header(stamp_ns, 'map'),
            pose=t['geometry_msgs/msg/Pose'](position=p, orientation=q)))


def _check_args(out, episodes: int, steps: int, noise: float):
    """``out`` as a new bag Path, the counts and the noise checked before anything starts."""
    from world_model_ctrl.collect import check_new_bag
    out = check_new_bag(out, episodes, steps)
    if not noise >= 0:
        raise ValueError(f'--noise must be >= 0 (a fraction of each limit), got {noise}')
    return out


@torch.no_grad()
def collect_planner(out, ckpt=None, episodes: int = 100, steps: int = 50, seed: int = 0,
                    noise: float = 0.3, world: str = 'overhead', params_file=None,
                    storage: str = 'mcap', progress: bool = True) -> dict:
    """Write ``episodes`` x ``steps`` planner commands (+ noise) from seeded starts to ``out``."""
    from tqdm import tqdm
    out = _check_args(out, episodes, steps, noise)
    torch.set_num_threads(1)
    agent = Agent(ckpt, world, params_file, {'seed': seed})
    high = agent.high
    cfg = world_config(world)
    sim = make_world(world, cfg.to_dict(), seed=seed)
    period = int(round(cfg.dt * 1e9))
    k, reached, t_start = 0, 0, time.monotonic()
    with BagWriter(out, storage) as writer:
        for topic, msgtype in TOPICS.items():
            writer.add_topic(topic, msgtype)
        msgs = _Msgs(writer)
        sim.reset()                                     # the sim's start-up reset
        for e in tqdm(range(episodes), desc='collect-planner', unit='ep', disable=not progress):
            frame = sim.reset()
            agent.reset(sim.episode)
            rng = exploration_rng(episode_seed(seed, sim.episode))
            hit = False
            for t in range(steps + 1):
                log_ns, stamp = LOG_T0 + k * period, k * period
                if t == 0:
                    msgs.marker(log_ns - 5_000_000, stamp, e + 1)
                msgs.reward(log_ns - 2_000_000, sim.reward())
                msgs.image(log_ns, stamp, frame)
                msgs.pose(log_ns + 1_000_000, stamp, sim.pos, float(getattr(sim, 'heading', 0.0)))
                k += 1
                if t == steps:
                    break
                a = agent.act(frame)
                a = add_exploration(a, noise, high, rng)
                agent.applied(a)
                msgs.cmd(log_ns + 30_000_000, agent.fields, a)
                frame, _, ok = sim.step(a)
                hit |= bool(ok)
            reached += hit
            k += GAP_STEPS
    return {'bag': str(out), 'storage': storage, 'episodes': episodes, 'steps': episodes * steps,
            'reached_goal_fraction': reached / episodes, 'noise': noise, 'world': world,
            'checkpoint': str(ckpt or 'shipped'), 'transport': 'none',
            'wall_s': round(time.monotonic() - t_start, 1)}


def collect_planner_ros(out, ckpt=None, episodes: int = 100, steps: int = 50, seed: int = 0,
                        noise: float = 0.3, world: str = 'overhead', params_file=None,
                        storage: str = 'mcap', domain_id: int | None = None,
                        progress: bool = True) -> dict:
    """`collect_planner` over ROS: the control graph as `wmc eval` runs it in lockstep (sim,
    belief and planner nodes, the planner with ``exploration_noise``) and the recorder node,
    each episode ``steps`` steps from the sim's seeded starts. The first ``steps`` commands of
    each episode are those `collect_planner` writes for the same arguments; the sim may take a
    step or two more before the next reset reaches it, and the sim's start-up frame, answered
    while the graph warms up, starts a short lead-in episode (recorded as they happened).

    A failure removes the incomplete bag; Ctrl-C keeps what the recorder closed."""
    import os
    import shutil

    from world_model_ctrl.closed_loop import _run_episodes, evaluation_graph
    from world_model_ctrl.collect import COLLECT_TOPICS, count_recorded
    from world_model_ctrl.procs import NodeSpec
    out = _check_args(out, episodes, steps, noise)
    cfg = world_config(world)
    graph, sim = evaluation_graph(ckpt, 'cpu', world, params_file, seed, False,
                                planner={'exploration_noise': float(noise), 'seed': seed})
    sim.params['reset_subscribers'] += 1        # the recorder keeps the episode starts too
    rec = NodeSpec('world_model_ctrl.recorder', {
        'output': str(out), 'storage': storage, 'topics': list(COLLECT_TOPICS),
        'types': [f'{t}:{m}' for t, m in COLLECT_TOPICS.items()]})

    written, subs = {}, []          # the recorder's last /diagnostics counts; its subscription

    def on_diagnostics(msg):
        for st in msg.status:
            if st.name.endswith('/recorder'):
                written.update((v.key, v.value) for v in st.values)

    def recording(node) -> bool:
        """The recorder has written camera frames and commands (the start-up frame, re-sent
        until the first reset, and the planner's answers to it): its subscriptions matched
        the publishers, which a subscription merely existing does not show."""
        if not subs:
            from diagnostic_msgs.msg import DiagnosticArray
            subs.append(node.create_subscription(DiagnosticArray, '/diagnostics',
                                                 on_diagnostics, 10))
        return all(int(written.get(t, 0)) > 0 for t in ('/camera/image_raw', '/cmd_vel'))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    try:
        # Stopped in reverse: the sim first (no more steps), then the recorder, so the bag
        # ends before the planner's shutdown zeros, which no step follows (recorded before
        # the last frame, they would be paired with it).
        specs = [*(s for s in graph if s is not sim), rec, sim]
        results, _ = _run_episodes(specs, episodes, steps, cfg, False, domain_id,
                                   record_frames=False, quiet=True, progress=progress,
                                   desc='collect-planner (ROS)', until_goal=False,
                                   ready=recording)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)       # new and incomplete: do not block a rerun
        raise
    if not (out / 'metadata.yaml').exists():
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f'the recorder did not close {out} (no metadata.yaml)')
    counted = count_recorded(out)
    return {'bag': str(out), 'storage': storage, **counted,
            'reached_goal_fraction': float(np.mean([r['success'] for r in results])),
            'noise': noise, 'world': world, 'checkpoint': str(ckpt or 'shipped'),
            'transport': 'ros', 'wall_s': round(time.monotonic() - t_start, 1)}
