"""pose_reward over real DDS: reward = -||p - goal|| / distance_scale for each odometry message."""
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile
from std_msgs.msg import Float32

from conftest import unique_domain
from faultkit import assert_clean_output
from rosutil import call, spin_until
from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env


class Probe:
    """Publishes odometry and goals into the node's (namespaced) topics; collects its output."""

    def __init__(self, node, ns='', odom='odom'):
        self.node, self.ns = node, ns
        qos = QoSProfile(depth=100)
        self.pub_odom = node.create_publisher(Odometry, f'{ns}/{odom}', qos)
        self.pub_goal = node.create_publisher(PoseStamped, f'{ns}/goal_pose', qos)
        self.rewards, self.diags = [], []
        node.create_subscription(Float32, f'{ns}/reward', lambda m: self.rewards.append(m.data),
                                 qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self.on_diag, qos)

    def on_diag(self, msg):
        for s in msg.status:
            if s.name.endswith(f'{self.ns}/pose_reward'):
                self.diags.append((s.level, s.message, {kv.key: kv.value for kv in s.values}))

    def wait_matched(self):
        spin_until(self.node, lambda: self.pub_odom.get_subscription_count() > 0
                   and self.pub_goal.get_subscription_count() > 0
                   and self.node.count_publishers(f'{self.ns}/reward') > 0,
                   timeout=30, what='pose_reward')
        # A best-effort reader drops what arrives before it has matched the writer: one
        # odometry message at a time until the node has taken one (a reward, or counted in
        # the 1 Hz diagnostics), then forget what that produced.
        for _ in range(15):
            self.pub_odom.publish(Odometry())
            try:
                spin_until(self.node, lambda: self.rewards or (
                    self.diags and self.diags[-1][2]['odom'] != '0'), timeout=2.0)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError('pose_reward never took an odometry message')
        with pytest.raises(AssertionError, match='timed out'):
            spin_until(self.node, lambda: False, timeout=0.5)
        self.rewards.clear()

    def odom(self, x, y, frame='odom', expect_reward=True):
        """Publish one odometry message; with ``expect_reward`` wait for its reward and return
        it, else spin 0.5 s and check nothing came."""
        msg = Odometry()
        msg.header.frame_id = frame
        msg.pose.pose.position.x, msg.pose.pose.position.y = float(x), float(y)
        n = len(self.rewards)
        self.pub_odom.publish(msg)
        if not expect_reward:
            with pytest.raises(AssertionError, match='timed out'):
                spin_until(self.node, lambda: len(self.rewards) > n, timeout=0.5)
            return None
        spin_until(self.node, lambda: len(self.rewards) > n, timeout=10, what='a reward')
        assert len(self.rewards) == n + 1
        return self.rewards[-1]

    def goal_pose(self, x, y, frame):
        msg = PoseStamped()
        msg.header.frame_id = frame
        msg.pose.position.x, msg.pose.position.y = float(x), float(y)
        self.pub_goal.publish(msg)

    def until_reward(self, x, y, value):
        """Odometry at (x, y) until its reward is ``value`` (a new goal has arrived)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.odom(x, y) == value:
                return
            time.sleep(0.01)
        raise AssertionError(f'reward at ({x}, {y}) never became {value}')

    def diag_where(self, cond, what):
        spin_until(self.node, lambda: self.diags and cond(*self.diags[-1]), timeout=10,
                   what=what)
        return self.diags[-1]


def expected(x, y, goal, scale):
    return float(np.float32(-math.hypot(x - goal[0], y - goal[1]) / scale))


@pytest.fixture
def start_node(tmp_path):
    group = NodeGroup(output=open(tmp_path / 'node.log', 'w'))
    yield lambda **kw: group.start(NodeSpec('world_model_ctrl.pose_reward', name='pose_reward',
                                            **kw))
    group.stop_all()
    group.output.close()


def log_of(tmp_path):
    return (tmp_path / 'node.log').read_text()


def test_reward_is_minus_distance_over_scale_goal_from_parameter_pose_and_param_set(
        ros_node, start_node, tmp_path):
    # a namespace and a remapped odometry topic: /robot1/base/odom
    proc = start_node(params={'goal': [1, 2], 'distance_scale': 2.0},
                      remaps={'odom': 'base/odom'}, namespace='robot1')
    probe = Probe(ros_node, '/robot1', odom='base/odom')
    probe.wait_matched()
    points = [(4.0, 6.0), (1.0, 2.0), (-2.5, 0.3), (1000.0, -7.25), (0.1, 0.2)]
    goal = (1.0, 2.0)
    got = [probe.odom(x, y) for x, y in points]
    assert got == [expected(x, y, goal, 2.0) for x, y in points]
    assert got[:2] == [-2.5, 0.0]          # 3-4-5: exact; at the goal: 0

    # RViz's "2D Goal Pose" (here in another frame than the odometry's: used as is, warned)
    probe.goal_pose(-3.0, 0.5, 'map')
    goal = (-3.0, 0.5)
    probe.until_reward(-3.0, 0.5, 0.0)
    got = [probe.odom(x, y) for x, y in points]
    assert got == [expected(x, y, goal, 2.0) for x, y in points]
    assert "goal_pose is in frame 'map', odometry in 'odom': no TF is applied" in log_of(tmp_path)

    # ros2 param set /robot1/pose_reward goal "[5.0, -1.0]"; a bad goal is refused
    client = ros_node.create_client(SetParameters, '/robot1/pose_reward/set_parameters')

    def set_goal(values):
        value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY,
                               double_array_value=values)
        return call(ros_node, client, SetParameters.Request(
            parameters=[Parameter(name='goal', value=value)])).results[0]
    assert not set_goal([1.0, 2.0, 3.0]).successful
    assert not set_goal([math.nan, 0.0]).successful
    assert set_goal([5.0, -1.0]).successful
    goal = (5.0, -1.0)
    got = [probe.odom(x, y) for x, y in points]
    assert got == [expected(x, y, goal, 2.0) for x, y in points]

    level, message, values = probe.diag_where(
        lambda lvl, msg, v: int(v['rewards']) > len(probe.rewards), 'diagnostics')
    assert (level, message) == (DiagnosticStatus.OK, 'publishing reward')
    assert values['goal'] == '[5, -1]' and values['distance_scale'] == '2'
    assert values['odom'] == values['rewards'] and values['goal_poses'] == '1'
    assert proc.poll() is None


def test_nonfinite_odometry_publishes_nothing(ros_node, start_node, tmp_path):
    start_node(params={'goal': [0.0, 0.0]})
    probe = Probe(ros_node)
    probe.wait_matched()
    assert probe.odom(3.0, -4.0) == -5.0              # distance_scale defaults to 1
    probe.odom(math.nan, 1.0, expect_reward=False)
    probe.odom(1.0, math.inf, expect_reward=False)
    assert probe.odom(0.0, -2.0) == -2.0
    assert probe.rewards == [-5.0, -2.0]
    _, _, values = probe.diag_where(lambda lvl, msg, v: v['nonfinite_odom'] == '2'
                                    and int(v['rewards']) == int(v['odom']) - 2, 'diagnostics')
    assert 'odometry with a non-finite position (nan, 1.0): no reward' in log_of(tmp_path)


def test_no_reward_until_a_goal_is_known(ros_node, start_node, tmp_path):
    start_node(params={'distance_scale': 0.5})
    probe = Probe(ros_node)
    probe.wait_matched()
    for x in range(3):
        probe.odom(x, 1.0, expect_reward=False)
    level, message, values = probe.diag_where(lambda lvl, msg, v: int(v['odom']) >= 4,
                                              'diagnostics')     # the warm-up's and these 3
    assert (level, message) == (DiagnosticStatus.WARN, 'no goal: no reward published')
    assert values['goal'] == 'none' and values['rewards'] == '0'
    assert values['without_goal'] == values['odom']
    assert 'no goal yet: no reward published' in log_of(tmp_path)
    assert probe.rewards == []
    probe.goal_pose(1.0, 1.0, '')                   # no frame_id: taken as the odometry's
    probe.diag_where(lambda lvl, msg, v: v['goal'] == '[1, 1]', 'the goal')
    assert probe.odom(1.0, 1.0) == 0.0
    assert probe.odom(4.0, 5.0) == -10.0            # 5 / 0.5
    assert 'no TF' not in log_of(tmp_path)


BAD_START = {
    'zero_scale': (['-p', 'distance_scale:=0.0'], 'distance_scale must be a finite number > 0'),
    'negative_scale': (['-p', 'distance_scale:=-1.5'], 'distance_scale must be a finite number'),
    'nan_scale': (['-p', 'distance_scale:=.nan'], 'distance_scale must be a finite number > 0'),
    'text_scale': (['-p', 'distance_scale:=far'], 'distance_scale must be a finite number > 0'),
    'goal_of_3': (['-p', 'goal:=[1.0, 2.0, 3.0]'], 'goal must be [x, y]'),
    'goal_text': (['-p', 'goal:=home'], 'goal must be [x, y]'),
}


@pytest.fixture(scope='module')
def bad_starts():
    procs = {case: subprocess.Popen(
        [sys.executable, '-m', 'world_model_ctrl.pose_reward', '--ros-args', *args],
        env=ros_env(unique_domain()), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for case, (args, _) in BAD_START.items()}
    results = {}
    for case, p in procs.items():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:     # it started after all: must not outlive the test
            p.kill()
        results[case] = (p.wait(), *p.communicate())
    return results


@pytest.mark.parametrize('case', sorted(BAD_START))
def test_bad_parameter_is_one_line_and_exit_2(case, bad_starts):
    returncode, stdout, stderr = bad_starts[case]
    assert returncode == 2, stderr
    lines = [ln for ln in (stdout + stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and 'cannot start' in lines[0], lines
    assert BAD_START[case][1] in lines[0]
    assert_clean_output(stdout + stderr)
