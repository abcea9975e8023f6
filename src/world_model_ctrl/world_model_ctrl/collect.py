"""`wmc collect`: lockstep room_sim + exploration policy + recorder over ROS topics -> one bag."""
from __future__ import annotations

import bisect
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import fields
from pathlib import Path

from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env, wait_for

log = logging.getLogger(__name__)

# Recorded topics with their types.
COLLECT_TOPICS = {
    '/cmd_vel': 'geometry_msgs/msg/Twist',
    '/room_sim/episode_start': 'std_msgs/msg/Header',
    '/camera/image_raw': 'sensor_msgs/msg/Image',
    '/reward': 'std_msgs/msg/Float32',
    '/room_sim/pose': 'geometry_msgs/msg/PoseStamped',
    '/room_sim/goal': 'geometry_msgs/msg/PoseStamped',
}


def collect(out: str, episodes: int = 10, steps: int = 50, seed: int = 0, policy: str = 'mix',
            storage: str = 'mcap', sim_params: dict | None = None, domain_id: int | None = None,
            progress: bool = True, timeout: float | None = None, world: str = 'overhead') -> dict:
    """Record ``episodes`` x ``steps`` exploration steps into the new bag ``out``.

    Arguments are checked before anything starts; if recording fails after the bag directory
    was created, that (new, incomplete) directory is removed so that a rerun is not blocked
    (Ctrl-C keeps it: the recorder closes what it has cleanly).
    """
    out = check_new_bag(out, episodes, steps)
    check_sim_params(sim_params or {}, world)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _record(out, episodes, steps, seed, policy, storage, sim_params, domain_id,
                       progress, timeout, world)
    except Exception:
        if out.exists():        # it did not exist before this run: an incomplete bag
            log.warning('collect failed: removing the incomplete bag %s', out)
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_new_bag(out, episodes: int, steps: int) -> Path:
    """``out`` as a Path, refused if it exists (bags are never overwritten) or the counts are
    not positive: checked before anything starts."""
    out = Path(out)
    if episodes < 1 or steps < 1:
        raise ValueError(f'--episodes and --steps must be >= 1, got {episodes} and {steps}')
    if out.exists():
        raise FileExistsError(f'{out} exists already; choose a new --out (bags are never '
                              'overwritten)')
    return out


def check_sim_params(sim_params: dict, world: str = 'overhead'):
    """room_sim's own checks (image_size >= 8, ...) before any process starts; the config."""
    from room_sim.worlds import WORLDS, world_config
    if world not in WORLDS:
        raise ValueError(f'world must be one of {sorted(WORLDS)}, got {world!r}')
    known = {f.name for f in fields(WORLDS[world][0])}
    try:
        cfg = world_config(world, {k: v for k, v in sim_params.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f'simulator parameters: {e}') from None
    if sim_params.get('noise_std', 0.0) < 0:
        raise ValueError(f"simulator parameters: noise_std must be >= 0, got "
                         f"{sim_params['noise_std']}")
    return cfg


def _record(out: Path, episodes: int, steps: int, seed: int, policy: str, storage: str,
            sim_params: dict | None, domain_id: int | None, progress: bool,
            timeout: float | None, world: str = 'overhead') -> dict:
    import rclpy
    from rclpy.node import Node

    env = ros_env(domain_id)
    cfg = check_sim_params(sim_params or {}, world)
    sim = NodeSpec('room_sim.node', {'mode': 'lockstep', 'seed': seed, 'world': world,
                                     **(sim_params or {})})
    rec = NodeSpec('world_model_ctrl.recorder', {
        'output': str(out), 'storage': storage, 'topics': list(COLLECT_TOPICS),
        'types': [f'{t}:{m}' for t, m in COLLECT_TOPICS.items()]})
    exp = NodeSpec('world_model_ctrl.explorer', {
        'policy': policy, 'episodes': episodes, 'steps': steps, 'seed': seed + 1,
        'max_speed': float(cfg.max_speed), 'progress': progress, 'world': world,
        'action_limits': [float(v) for v in cfg.action_limits], 'dt': float(cfg.dt),
        'min_cmd_subscribers': 2})
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    rclpy.init(domain_id=domain_id)
    watcher = Node('wmc_collect')
    t0 = time.monotonic()
    try:
        with NodeGroup(env) as group:
            rec_proc = group.start(rec)
            group.start(sim)

            def recorder_ready():
                group.check_alive()
                return (watcher.count_subscribers('/camera/image_raw') >= 1
                        and watcher.count_subscribers('/room_sim/episode_start') >= 1
                        and watcher.count_subscribers('/cmd_vel') >= 2
                        and watcher.count_publishers('/camera/image_raw') >= 1)
            wait_for(recorder_ready, 60, 'the recorder and room_sim to start')
            time.sleep(0.5)    # let the recorder's subscriptions match the sim's publishers
            t1 = time.monotonic()
            exp_proc = group.start(exp)
            try:
                rc = exp_proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f'the explorer did not finish within {timeout} s') from None
            t2 = time.monotonic()
            if rc != 0:
                raise RuntimeError(f'explorer exited with code {rc}')
            rc = group.stop(rec_proc)
            if rc != 0:
                raise RuntimeError(f'recorder exited with code {rc}; the bag may be incomplete')
    finally:
        watcher.destroy_node()
        rclpy.try_shutdown()
    counted = count_recorded(out)
    if counted != {'episodes': episodes, 'steps': episodes * steps}:
        log.warning('the bag %s holds %d episodes and %d steps (commands); %d x %d = %d were '
                    'requested', out, counted['episodes'], counted['steps'], episodes, steps,
                    episodes * steps)
    return {'bag': str(out), 'storage': storage, **counted,
            'collect_s': round(t2 - t1, 3), 'steps_per_s': round(counted['steps'] / (t2 - t1), 1),
            'wall_s': round(time.monotonic() - t0, 3)}


def count_recorded(bag: Path) -> dict:
    """What the closed bag holds: ``steps`` = /cmd_vel messages, ``episodes`` = episode
    markers followed by at least one command before the next marker (in log time).

    The sim's start-up frame carries a marker of its own (episode 0) before the first reset:
    not an episode, even where commands answered it (the planner, while the graph warms up).
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    cmds, markers = [], []
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        conns = [c for c in reader.connections
                 if c.topic in ('/cmd_vel', '/room_sim/episode_start')]
        for conn, t, raw in reader.messages(connections=conns):
            if conn.topic == '/cmd_vel':
                cmds.append(t)
            elif reader.deserialize(raw, conn.msgtype).frame_id != '0':
                markers.append(t)
    cmds.sort()
    markers.sort()
    ends = markers[1:] + [float('inf')]
    episodes = sum(bisect.bisect_left(cmds, m) < bisect.bisect_left(cmds, e)
                   for m, e in zip(markers, ends))
    return {'episodes': int(episodes), 'steps': len(cmds)}


def print_summary(result: dict) -> None:
    print(json.dumps(result, indent=2))
