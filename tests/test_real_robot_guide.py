"""docs/real_robot.md, walked end to end with only ROS topics in between.

room_sim's onboard world stands in for the robot: a forward camera, a differential drive on
cmd_vel, odometry on `odom` and NO reward topic. Then, as the guide says: record with the nodes
of launch/record_robot.launch.py (pose_reward turns odometry into the reward, the explorer
drives, the recorder writes the bag), train on that bag (`wmc train-ssm`, tiny preset), and
bring up control with `wmc up --no-sim --world onboard --checkpoint ...`: the planner drives the
simulated robot, within the bounds the bag taught, and Ctrl-C leaves it at zero.
"""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from conftest import unique_domain
from faultkit import stop_process
from test_record_robot import robot_graph
from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.data import DataConfig, bag_to_episodes
from world_model_ctrl.paths import config_file
from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env

MODULES = {'pose_reward': 'world_model_ctrl.pose_reward', 'recorder': 'world_model_ctrl.recorder',
           'explorer': 'world_model_ctrl.explorer'}
GOAL = [1.0, 1.0]               # the room's centre, in the sim's odometry frame


class _Watch:
    def __init__(self, domain):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = Node('guide_probe', context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.cmds, self.odom = [], []
        self.node.create_subscription(Twist, 'cmd_vel', lambda m: self.cmds.append(
            (time.monotonic(), m.linear.x, m.angular.z)), QoSProfile(depth=1000))
        self.node.create_subscription(Odometry, 'odom', lambda m: self.odom.append(
            (m.pose.pose.position.x, m.pose.pose.position.y)), QoSProfile(depth=1000))

    def until(self, cond, timeout, what, procs=()):
        deadline = time.monotonic() + timeout
        while not cond():
            for p in procs:
                assert p.poll() is None or p.returncode == 0, f'{what}: a process exited'
            assert time.monotonic() < deadline, f'timed out after {timeout} s waiting for {what}'
            self.ex.spin_once(timeout_sec=0.02)

    def close(self):
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def test_record_train_and_drive_the_onboard_robot_through_ros(tmp_path, monkeypatch):
    domain = unique_domain()
    env = ros_env(domain)
    watch = _Watch(domain)
    bag, ckpt = tmp_path / 'run1', tmp_path / 'robot.pt'
    try:
        with NodeGroup(env, quiet=True) as robot:
            # 0. the "robot": odometry, no reward topic
            robot.start(NodeSpec('room_sim.node', {'publish_odom': True, 'publish_reward': False,
                                                   'seed': 3}, {},
                                 [config_file('sim_onboard.yaml')], 'room_sim'))
            watch.until(lambda: len(watch.odom) > 5, 60, 'the robot publishing odometry')
            assert watch.node.count_publishers('/reward') == 0

            # 2. record: the nodes of record_robot.launch.py (drive:=explorer), shorter
            _, nodes, _ = robot_graph({'goal': json.dumps(GOAL), 'output': str(bag)},
                                      monkeypatch)
            with NodeGroup(env, quiet=True) as rec:
                procs = {}
                for exe in ('pose_reward', 'recorder', 'explorer'):
                    n = nodes[exe]
                    params = dict(n.params)
                    if exe == 'explorer':
                        params.update(episodes=3, steps=30, episode_pause=0.3)
                    procs[exe] = rec.start(NodeSpec(MODULES[exe], params, n.remaps, n.files,
                                                    n.name, n.namespace))
                watch.until(lambda: procs['explorer'].poll() is not None, 120,
                            'the explorer to drive 3 episodes', procs.values())
                assert procs['explorer'].returncode == 0
                assert stop_process(procs['recorder'], signal.SIGINT, timeout=30) == 0

            # odometry (so the reward) comes with each frame, not before it: nearest
            cfg = DataConfig(image_topic='/camera/image_raw', reward_topic='/reward',
                             cmd_topic='/cmd_vel', episode_topic=None, reward_match='nearest',
                             action_fields=('linear.x', 'angular.z'))
            eps = bag_to_episodes(bag, cfg)
            frames = sum(len(e) for e in eps)
            assert frames >= 60, frames
            turns = np.concatenate([e.actions[:, 1] for e in eps])
            assert np.abs(turns).max() > 0.1                 # the explorer turned
            rewards = np.concatenate([e.rewards for e in eps])
            assert np.all(rewards <= 0) and rewards.min() < -0.05   # -distance to the goal

            # 3. train (tiny preset: the path, not the quality)
            train = subprocess.run(
                [sys.executable, '-m', 'world_model_ctrl.cli', 'train-ssm', '--bags', str(bag),
                 '--out', str(ckpt), '--preset', 'debug', '--steps', '20', '--device', 'cpu',
                 '--set', 'data.episode_topic=null', '--set', 'data.reward_match=nearest',
                 '--set', 'data.action_fields=[linear.x, angular.z]', '--no-progress'],
                env=env, capture_output=True, text=True, timeout=300)
            assert train.returncode == 0, train.stderr[-2000:]
            extra = load_checkpoint(ckpt, 'ssm')['extra']
            assert extra['frame_interval_s'] == pytest.approx(0.1, rel=0.2)   # the 10 Hz sim
            assert extra['action']['fields'] == ['linear.x', 'angular.z']
            bounds = extra['action']['bounds']
            assert bounds == pytest.approx([0.2, 0.6], rel=0.05)  # record_robot.yaml's limits

            # 5. bring up control on the "robot"
            up = subprocess.Popen(
                [sys.executable, '-m', 'world_model_ctrl.cli', 'up', '--no-sim', '--world',
                 'onboard', '--checkpoint', str(ckpt)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            try:
                t0 = time.monotonic()
                watch.until(lambda: any(at > t0 and (vx or wz) for at, vx, wz in watch.cmds),
                            90, 'the planner driving the robot', [up])
                n_odom = len(watch.odom)
                watch.until(lambda: len(watch.odom) > n_odom + 20, 10, 'odometry while driving')
                moved = np.ptp(np.array(watch.odom[n_odom:]), axis=0).max()
                assert moved > 0.005, moved
                driven = np.array([(vx, wz) for at, vx, wz in watch.cmds if at > t0])
                assert np.all(np.abs(driven) <= np.array(bounds) + 1e-6)   # the trained bounds
                assert stop_process(up, signal.SIGINT, timeout=30) == 0
                t_stop = time.monotonic()
                watch.until(lambda: time.monotonic() > t_stop + 1.0, 5, 'after the stop')
                last = [c for c in watch.cmds if c[0] > t0][-1]
                assert (last[1], last[2]) == (0.0, 0.0), \
                    f'the last command was not zero: {[(round(c[0] - t_stop, 3), c[1], c[2]) for c in watch.cmds[-8:]]}'
            finally:
                if up.poll() is None:
                    up.kill()
    finally:
        watch.close()
