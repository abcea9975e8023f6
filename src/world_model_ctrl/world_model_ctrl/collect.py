"""`wmc collect`: lockstep room_sim + exploration policy + recorder over ROS topics -> one bag."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env, wait_for

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
            progress: bool = True, timeout: float | None = None) -> dict:
    """Record ``episodes`` x ``steps`` exploration steps into the new bag ``out``."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f'{out} exists already; choose a new --out (bags are never '
                              'overwritten)')
    if episodes < 1 or steps < 1:
        raise ValueError('--episodes and --steps must be >= 1')
    out.parent.mkdir(parents=True, exist_ok=True)
    import rclpy
    from rclpy.node import Node

    env = ros_env(domain_id)
    sim = NodeSpec('room_sim.node', {'mode': 'lockstep', 'seed': seed, **(sim_params or {})})
    rec = NodeSpec('world_model_ctrl.recorder', {
        'output': str(out), 'storage': storage, 'topics': list(COLLECT_TOPICS),
        'types': [f'{t}:{m}' for t, m in COLLECT_TOPICS.items()]})
    exp = NodeSpec('world_model_ctrl.explorer', {
        'policy': policy, 'episodes': episodes, 'steps': steps, 'seed': seed + 1,
        'max_speed': float((sim_params or {}).get('max_speed', 0.5)), 'progress': progress,
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
            rc = exp_proc.wait(timeout)
            t2 = time.monotonic()
            if rc != 0:
                raise RuntimeError(f'explorer exited with code {rc}')
            rc = group.stop(rec_proc)
            if rc != 0:
                raise RuntimeError(f'recorder exited with code {rc}; the bag may be incomplete')
    finally:
        watcher.destroy_node()
        rclpy.try_shutdown()
    total = episodes * steps
    return {'bag': str(out), 'storage': storage, 'episodes': episodes, 'steps': total,
            'collect_s': round(t2 - t1, 3), 'steps_per_s': round(total / (t2 - t1), 1),
            'wall_s': round(time.monotonic() - t0, 3)}


def print_summary(result: dict) -> None:
    print(json.dumps(result, indent=2))
