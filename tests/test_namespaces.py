"""Two namespaced control graphs in ONE DDS domain: no cross-talk, each with its own params.

`wmc up --namespace robot1` (relative) and `--namespace /robot2` (absolute), each with a params
file of its own (action_limits 0.1 and 0.3 per axis). Frames on /robot1/camera/image_raw must drive
/robot1/cmd_vel only; /robot2/cmd_vel stays zero and plain /cmd_vel silent; then the same the
other way round. The commands of each robot reach, and stay within, its own limits, so the
`/**/planner:` keys of the params files applied under both namespaces (the default, the trained bound, is 0.5).
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
import yaml
from geometry_msgs.msg import Twist
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image

from conftest import unique_domain
from faultkit import rgb_msg, stop_process
from room_sim.world import RoomWorld
from world_model_ctrl.paths import config_file
from world_model_ctrl.procs import ros_env


SPEED = {'robot1': 0.1, 'robot2': 0.3}
TIMEOUT = 1.0       # belief_timeout of both planners


def _params(tmp_path, name, limit):
    params = yaml.safe_load(config_file('control.yaml').read_text())
    # Small, saturating CEM: one iteration, the best of 20 wide samples -> |command| ~ the limit.
    params['/**/planner']['ros__parameters'].update(
        action_limits=[limit, limit], belief_timeout=TIMEOUT, candidates=20, horizon=3,
        iterations=1, top_k=1, init_std=5.0, min_std=1.0)
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(params))
    return path


class _Probe:
    def __init__(self, domain):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = Node('ns_probe', context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.cmds = {t: [] for t in ('/robot1/cmd_vel', '/robot2/cmd_vel', '/cmd_vel')}
        for topic, log in self.cmds.items():
            self.node.create_subscription(
                Twist, topic, lambda m, log=log: log.append(
                    (time.monotonic(), np.array([m.linear.x, m.linear.y]))),
                QoSProfile(depth=1000))
        self.cams = {r: self.node.create_publisher(Image, f'/{r}/camera/image_raw',
                                                   qos_profile_sensor_data) for r in SPEED}
        self.world = RoomWorld(seed=0)
        self.world.reset()
        self.rng = np.random.default_rng(0)
        self.robot = None
        self.node.create_timer(0.1, self._frame)

    def _frame(self):
        if self.robot is not None:
            rgb, _, _ = self.world.step(self.rng.uniform(-0.5, 0.5, 2))
            self.cams[self.robot].publish(rgb_msg(rgb, time.time_ns()))

    def until(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f'timed out after {timeout} s waiting for {what}'
            self.executor.spin_once(timeout_sec=0.02)

    def spin(self, seconds):
        end = time.monotonic() + seconds
        self.until(lambda: time.monotonic() > end, seconds + 1, 'time')

    def since(self, robot, t):
        return np.array([c for at, c in self.cmds[f'/{robot}/cmd_vel'] if at >= t]).reshape(-1, 2)

    def moving(self, robot, t):
        return bool(np.abs(self.since(robot, t)).sum() > 0)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def test_two_namespaced_graphs_in_one_domain_do_not_cross_talk(tmp_path, tiny_ssm_ckpt):
    domain = unique_domain()
    probe = _Probe(domain)
    procs, logs = {}, {}
    try:
        for robot, ns in (('robot1', 'robot1'), ('robot2', '/robot2')):
            logs[robot] = open(tmp_path / f'{robot}.log', 'w+')
            procs[robot] = subprocess.Popen(
                [sys.executable, '-m', 'world_model_ctrl.cli', 'up', '--no-sim',
                 '--namespace', ns, '--checkpoint', str(tiny_ssm_ckpt),
                 '--params', str(_params(tmp_path, robot, SPEED[robot]))],
                env=ros_env(domain), stdout=logs[robot], stderr=subprocess.STDOUT,
                start_new_session=True)

        def up():
            for robot, proc in procs.items():
                assert proc.poll() is None, \
                    f'wmc up {robot} exited: {open(logs[robot].name).read()[-2000:]}'
            return all(len(probe.cmds[f'/{r}/cmd_vel']) > 2 for r in SPEED)
        probe.until(up, 60, 'both planners publishing (zero, no belief yet)')

        other = {'robot1': 'robot2', 'robot2': 'robot1'}
        for robot in ('robot1', 'robot2'):
            t = time.monotonic()
            probe.robot = robot
            probe.until(lambda: up() is not None and probe.moving(robot, t), 30,
                        f'/{robot}/cmd_vel to move on /{robot}/camera/image_raw frames')
            # long enough that the other robot's window below (from t + 1.5 s) holds well over
            # 5 of its 10 Hz commands on a loaded machine (2.0 s left ~6: a flaky count)
            probe.spin(3.0)
            probe.robot = None
            mine, theirs = probe.since(robot, t), probe.since(other[robot], t + TIMEOUT + 0.5)
            # this robot's own limit from its own params file: reached and never exceeded
            assert np.all(np.abs(mine) <= SPEED[robot] + 1e-9), np.abs(mine).max()
            assert np.abs(mine).max() > 0.8 * SPEED[robot], np.abs(mine).max()
            # the other robot saw none of these frames (after its own earlier beliefs went stale)
            assert len(theirs) > 5 and np.abs(theirs).sum() == 0, theirs
            probe.spin(TIMEOUT + 0.2)
        assert probe.cmds['/cmd_vel'] == [], 'a command escaped the namespaces'
        for robot, proc in procs.items():
            assert stop_process(proc, signal.SIGINT, timeout=30) == 0, robot
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        probe.close()
