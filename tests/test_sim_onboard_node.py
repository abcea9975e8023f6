"""room_sim node with `world: onboard`, odometry and reward switches, over real DDS in an isolated
domain (the sim runs as its own process)."""
import math
from pathlib import Path

import pytest
import yaml
from geometry_msgs.msg import PoseStamped, Twist
from std_msgs.msg import Float32

from rosutil import spin_until
from world_model_ctrl.procs import NodeGroup, NodeSpec

CONFIG = Path(__file__).resolve().parents[1] / 'config'


def yaw(q) -> float:
    return math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))


@pytest.fixture
def sim(ros_node):
    groups = []

    def start(params_files=(), **params):
        group = NodeGroup()
        group.start(NodeSpec('room_sim.node', params, params_files=list(params_files)))
        groups.append(group)
        return group
    yield start
    for g in groups:
        g.stop_all()


def poses_of(node):
    poses = []
    node.create_subscription(PoseStamped, 'room_sim/pose', poses.append, 10)
    return poses


def step_once(node, pub, poses, linear_x=0.0, linear_y=0.0, angular_z=0.0):
    """Publish one command to a lockstep sim; return the pose of the frame it produced."""
    spin_until(node, lambda: pub.get_subscription_count() > 0, what='sim subscription')
    spin_until(node, lambda: poses, what='a pose (republished in lockstep)')
    last = poses[-1].header.stamp
    cmd = Twist()
    cmd.linear.x, cmd.linear.y, cmd.angular.z = linear_x, linear_y, angular_z
    pub.publish(cmd)
    spin_until(node, lambda: poses[-1].header.stamp != last, what='the frame after a command')
    return poses[-1]


def test_onboard_world_steps_on_linear_x_and_angular_z(ros_node, sim):
    sim(world='onboard', mode='lockstep', start=[1.0, 0.5, 0.0], seed=1)
    poses = poses_of(ros_node)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: poses, what='first pose')
    p0 = poses[-1].pose
    assert (p0.position.x, p0.position.y, yaw(p0.orientation)) == pytest.approx((1.0, 0.5, 0.0))
    p1 = step_once(ros_node, pub, poses, linear_x=0.3, linear_y=0.5, angular_z=1.0).pose
    # unicycle, midpoint rule: 0.03 m along heading 0.05; linear.y means nothing to this robot
    assert p1.position.x == pytest.approx(1.0 + 0.03 * math.cos(0.05), abs=1e-9)
    assert p1.position.y == pytest.approx(0.5 + 0.03 * math.sin(0.05), abs=1e-9)
    assert yaw(p1.orientation) == pytest.approx(0.1, abs=1e-9)
    assert p1.orientation.z ** 2 + p1.orientation.w ** 2 == pytest.approx(1.0)
    p2 = step_once(ros_node, pub, poses, angular_z=-100.0).pose      # clipped to -3 rad/s
    assert yaw(p2.orientation) == pytest.approx(0.1 - 0.3, abs=1e-9)
    assert (p2.position.x, p2.position.y) == pytest.approx((p1.position.x, p1.position.y))


def test_overhead_world_keeps_linear_x_y_and_identity_orientation(ros_node, sim):
    sim(mode='lockstep', start=[1.0, 1.0], seed=1)
    poses = poses_of(ros_node)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    p = step_once(ros_node, pub, poses, linear_x=0.2, linear_y=-0.3, angular_z=2.0).pose
    assert (p.position.x, p.position.y) == pytest.approx((1.02, 0.97), abs=1e-9)
    assert (p.orientation.z, p.orientation.w) == (0.0, 1.0)


@pytest.mark.parametrize('world', ['onboard', 'overhead'])
def test_odometry_is_published_when_asked(ros_node, sim, world):
    nav_msgs = pytest.importorskip('nav_msgs.msg', reason='nav_msgs (ros-nav-msgs) not installed')
    start = [0.6, 0.7, 0.5] if world == 'onboard' else [0.6, 0.7]
    sim(world=world, mode='lockstep', start=start, publish_odom=True, seed=1)
    poses, odoms = poses_of(ros_node), []
    ros_node.create_subscription(nav_msgs.Odometry, 'odom', odoms.append, 10)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: odoms, what='odometry')
    assert (odoms[-1].twist.twist.linear.x, odoms[-1].twist.twist.angular.z) == (0.0, 0.0)
    pose = step_once(ros_node, pub, poses, linear_x=0.4, linear_y=0.2, angular_z=-1.0)
    spin_until(ros_node, lambda: odoms[-1].header.stamp == pose.header.stamp,
               what='the odometry of the new frame')
    odom = odoms[-1]
    assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
    assert odom.pose.pose.position == pose.pose.position        # the room's frame: no drift
    assert odom.pose.pose.orientation == pose.pose.orientation
    twist = odom.twist.twist
    if world == 'onboard':
        assert (twist.linear.x, twist.linear.y, twist.angular.z) == (0.4, 0.0, -1.0)
        assert yaw(odom.pose.pose.orientation) == pytest.approx(0.5 - 0.1)
    else:
        assert (twist.linear.x, twist.linear.y, twist.angular.z) == (0.4, 0.2, 0.0)


def test_no_odometry_by_default_and_no_reward_when_publish_reward_is_false(ros_node, sim):
    sim(world='onboard', mode='lockstep', publish_reward=False, seed=1)
    poses = poses_of(ros_node)
    rewards = []
    ros_node.create_subscription(Float32, 'reward', rewards.append, 10)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    for _ in range(3):
        step_once(ros_node, pub, poses, linear_x=0.5, angular_z=1.0)
    assert ros_node.count_publishers('/room_sim/pose') == 1
    assert ros_node.count_publishers('/reward') == 0 and rewards == []
    assert ros_node.count_publishers('/odom') == 0
    # ... and with the defaults there is a reward publisher (the same probe sees it)
    sim(world='onboard', mode='lockstep', seed=2)
    spin_until(ros_node, lambda: rewards, what='a reward from the default sim')
    assert ros_node.count_publishers('/reward') == 1


def test_sim_onboard_yaml_starts_the_onboard_world_with_every_key_declared(ros_node, sim):
    """Every key of config/sim_onboard.yaml is a parameter of the node (a typo would be
    silently ignored by ROS), and the file selects the onboard world."""
    from rclpy.parameter import Parameter

    from room_sim.node import RoomSimNode
    params = yaml.safe_load((CONFIG / 'sim_onboard.yaml').read_text())
    assert list(params) == ['/**/room_sim']
    values = params['/**/room_sim']['ros__parameters']
    node = RoomSimNode(context=ros_node.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in values.items()])
    try:
        assert all(node.has_parameter(k) for k in values), \
            [k for k in values if not node.has_parameter(k)]
        assert node.world_name == 'onboard' and node.world.cfg.max_turn_rate == 3.0
    finally:
        node.destroy_node()
    overhead = yaml.safe_load((CONFIG / 'sim.yaml').read_text())['/**/room_sim']
    node = RoomSimNode(context=ros_node.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in overhead['ros__parameters'].items()])
    try:
        assert all(node.has_parameter(k) for k in overhead['ros__parameters'])
        assert node.world_name == 'overhead'
    finally:
        node.destroy_node()
    # the file as a process reads it: lockstep by override, steps on angular.z
    sim(params_files=[CONFIG / 'sim_onboard.yaml'], mode='lockstep', start=[1.0, 1.0, 0.0])
    poses = poses_of(ros_node)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    p = step_once(ros_node, pub, poses, angular_z=1.0).pose
    assert yaw(p.orientation) == pytest.approx(0.1, abs=1e-9)


def test_bad_world_is_refused_with_exit_code_2(ros_domain):
    group = NodeGroup(quiet=True)
    try:
        proc = group.start(NodeSpec('room_sim.node', {'world': 'sideways'}))
        assert proc.wait(30) == 2
        proc = group.start(NodeSpec('room_sim.node', {'world': 'onboard',
                                                      'start': [1.0, 1.0, 0.0, 1.0]}))
        assert proc.wait(30) == 2
    finally:
        group.stop_all()
