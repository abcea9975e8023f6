"""The explorer driving the onboard world (v, w), reading pose + heading from room_sim/pose or
odom, and episodes without room_sim/reset (a real robot), over real DDS in an isolated domain."""
import math

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped, Twist
from rclpy.qos import QoSProfile
from std_msgs.msg import Header

from rosutil import spin_until
from world_model_ctrl.procs import NodeGroup, NodeSpec


class Probe:
    """Everything the sim and the explorer publish, with arrival times."""

    def __init__(self, node):
        self.node = node
        self.cmds, self.poses, self.sim_markers, self.markers = [], [], [], []
        qos = QoSProfile(depth=1000)
        clock = node.get_clock()
        node.create_subscription(Twist, 'cmd_vel', lambda m: self.cmds.append(
            (clock.now().nanoseconds * 1e-9, m)), qos)
        node.create_subscription(PoseStamped, 'room_sim/pose', self.poses.append, qos)
        node.create_subscription(Header, 'room_sim/episode_start', self.sim_markers.append, qos)
        node.create_subscription(Header, 'explorer/episode_start', self.markers.append, qos)


def stamp_ns(s):
    return s.sec * 1_000_000_000 + s.nanosec


@pytest.fixture
def graph(ros_node):
    group = NodeGroup()
    probe = Probe(ros_node)

    def run(sim, explorer, timeout=60):
        group.start(NodeSpec('room_sim.node', {'mode': 'lockstep', 'seed': 3, **sim}))
        spin_until(ros_node, lambda: ros_node.count_publishers('/camera/image_raw') > 0,
                   what='the sim')
        # The explorer starts once its cmd_vel writer has matched 3 readers (the sim, the
        # probe's and a second one made here), and the second is made only once this node has
        # discovered the explorer's cmd_vel, so the probe's reader has matched the writer too:
        # a writer matched to a reader does not mean that reader matched the writer (a lost
        # discovery announcement takes seconds to repeat; the probe once missed every command).
        proc = group.start(NodeSpec('world_model_ctrl.explorer', {
            'progress': False, 'seed': 4, 'min_cmd_subscribers': 3, **explorer}))
        spin_until(ros_node, lambda: ros_node.count_publishers('/cmd_vel') > 0,
                   what="the explorer's cmd_vel")
        ros_node.create_subscription(Twist, 'cmd_vel', lambda m: None, 10)
        spin_until(ros_node, lambda: proc.poll() is not None, timeout, 'the explorer to finish')
        spin_until(ros_node, lambda: len(probe.poses) > 0, what='poses')
        end = ros_node.get_clock().now().nanoseconds + 300_000_000     # the last messages
        spin_until(ros_node, lambda: ros_node.get_clock().now().nanoseconds > end)
        return proc.returncode
    yield run, probe
    group.stop_all()


def yaw(q):
    return math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))


def test_onboard_explorer_commands_v_and_w_within_its_limits(graph):
    run, probe = graph
    sim = {'world': 'onboard', 'max_speed': 0.4, 'max_turn_rate': 2.0}
    assert run(sim, {'world': 'onboard', 'action_limits': [0.4, 2.0], 'episodes': 2,
                     'steps': 30}) == 0
    c = np.array([(m.linear.x, m.linear.y, m.angular.z) for _, m in probe.cmds])
    assert len(c) == 60
    assert np.all(c[:, 1] == 0)                         # no sideways command for this robot
    assert np.all(np.abs(c[:, 0]) <= 0.4) and np.all(np.abs(c[:, 2]) <= 2.0)
    assert np.abs(c[:, 0]).max() > 0.3 and np.abs(c[:, 2]).max() > 1.5
    assert len({m.frame_id for m in probe.sim_markers} - {'0'}) == 2      # reset per episode
    headings = {round(yaw(p.pose.orientation), 6) for p in probe.poses}
    assert len(headings) > 20
    assert probe.markers == []                          # with resets the sim marks episodes


@pytest.mark.parametrize('pose_type', ['pose', 'odometry'])
def test_goal_seeker_reads_pose_and_heading(graph, pose_type):
    """The goal policy needs position and heading (else it drives at random): it reaches the
    goal only if the explorer reads both, from room_sim/pose or from odom."""
    if pose_type == 'odometry':
        pytest.importorskip('nav_msgs.msg', reason='nav_msgs (ros-nav-msgs) not installed')
    run, probe = graph
    sim = {'world': 'onboard', 'publish_odom': pose_type == 'odometry'}
    exp = {'world': 'onboard', 'policy': 'goal', 'episodes': 3, 'steps': 40}
    if pose_type == 'odometry':
        exp.update(pose_topic='odom', pose_type='odometry')
    assert run(sim, exp) == 0
    by_stamp = {stamp_ns(p.header.stamp): p.pose.position for p in probe.poses}
    starts = sorted(stamp_ns(m.stamp) for m in probe.sim_markers if m.frame_id != '0')
    assert len(starts) == 3
    for s in starts:
        last = by_stamp[s + 40 * 100_000_000]              # the episode's last frame
        first = by_stamp[s]
        d0 = math.hypot(first.x - 1.0, first.y - 1.0)
        d1 = math.hypot(last.x - 1.0, last.y - 1.0)
        assert d1 < 0.25 and d1 < d0, (d0, d1)


def test_without_reset_service_episodes_end_with_zero_and_a_pause(graph, ros_node):
    run, probe = graph
    assert run({'world': 'onboard'},
               {'world': 'onboard', 'reset_service': False, 'episodes': 3, 'steps': 5,
                'episode_pause': 0.4}) == 0
    assert ros_node.count_clients('/room_sim/reset') == 0
    assert [m.frame_id for m in probe.sim_markers] in ([], ['0'])    # never reset
    cmds = probe.cmds
    assert len(cmds) == 3 * 6
    for k, (t, m) in enumerate(cmds):
        zero = (m.linear.x, m.angular.z) == (0.0, 0.0)
        assert zero == (k % 6 == 5), k                  # 5 commands, then a zero
        if k % 6 == 5 and k + 1 < len(cmds):
            assert cmds[k + 1][0] - t >= 0.35           # the pause (probe's arrival clock)
    # the explorer marks each episode's first frame (sim time: consecutive lockstep frames)
    marks = [(int(m.frame_id), stamp_ns(m.stamp)) for m in probe.markers]
    assert [i for i, _ in marks] == [0, 1, 2]
    assert [b - a for (_, a), (_, b) in zip(marks, marks[1:])] == [6 * 100_000_000] * 2


@pytest.mark.parametrize('params', [
    {'world': 'sideways'},
    {'world': 'overhead', 'policy': 'turns'},
    {'world': 'overhead', 'action_limits': [0.5, 3.0]},
    {'world': 'onboard', 'action_limits': [0.5]},
    {'world': 'onboard', 'pose_type': 'tf'},
])
def test_bad_parameters_are_refused_with_exit_code_2(ros_domain, params):
    group = NodeGroup(quiet=True)
    try:
        assert group.start(NodeSpec('world_model_ctrl.explorer', params)).wait(30) == 2
    finally:
        group.stop_all()
