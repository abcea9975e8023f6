"""room_sim node over real DDS in an isolated domain (the sim runs as its own process)."""
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped, Vector3
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, Header
from std_srvs.srv import Trigger

from rosutil import call, spin_until
from world_model_ctrl.procs import NodeGroup, NodeSpec


class Probe:
    """Collects what the sim publishes."""

    def __init__(self, node):
        self.node = node
        self.images, self.rewards, self.poses, self.episodes = [], [], [], []
        node.create_subscription(Image, 'camera/image_raw', self.images.append,
                                 qos_profile_sensor_data)
        node.create_subscription(Float32, 'reward', self.rewards.append, 10)
        node.create_subscription(PoseStamped, 'room_sim/pose', self.poses.append, 10)
        node.create_subscription(Header, 'room_sim/episode_start', self.episodes.append, 10)

    def pos(self, i=-1):
        p = self.poses[i].pose.position
        return np.array([p.x, p.y])


def _spin_for(node, seconds):
    end = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() > end, seconds + 5)


def stamp(msg):
    s = msg.stamp if isinstance(msg, Header) else msg.header.stamp
    return s.sec + s.nanosec * 1e-9


@pytest.fixture
def sim(ros_node):
    def start(**params):
        group = NodeGroup()
        group.start(NodeSpec('room_sim.node', params))
        return group
    groups = []
    yield lambda **p: groups.append(start(**p)) or groups[-1]
    for g in groups:
        g.stop_all()


def test_lockstep_command_gives_next_frame_and_reward(ros_node, sim):
    sim(mode='lockstep', seed=3)
    probe = Probe(ros_node)
    reset = ros_node.create_client(Trigger, 'room_sim/reset')
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: pub.get_subscription_count() > 0, what='sim subscription')
    resp = call(ros_node, reset, Trigger.Request())
    assert resp.success and resp.message.startswith('episode')
    spin_until(ros_node, lambda: probe.episodes and probe.images and probe.poses,
               what='first frame')
    first_img, p0 = probe.images[-1], probe.pos()
    assert (first_img.height, first_img.width, first_img.encoding) == (64, 64, 'rgb8')
    assert stamp(probe.episodes[-1]) == pytest.approx(stamp(first_img))
    n = len(probe.images)
    cmd = Twist()
    cmd.linear.x, cmd.linear.y = 0.4, -0.3
    pub.publish(cmd)
    spin_until(ros_node, lambda: len(probe.images) > n and len(probe.poses) > n,
               what='frame after command')
    assert stamp(probe.images[-1]) == pytest.approx(stamp(first_img) + 0.1)
    np.testing.assert_allclose(probe.pos() - p0, [0.04, -0.03], atol=1e-9)
    goal = np.array([1.0, 1.0])
    assert probe.rewards[-1].data == pytest.approx(-np.linalg.norm(probe.pos() - goal) / 2,
                                                   abs=1e-6)
    img = np.frombuffer(probe.images[-1].data, np.uint8).reshape(64, 64, 3)
    assert not np.array_equal(img, np.frombuffer(first_img.data, np.uint8).reshape(64, 64, 3))


def test_reset_starts_new_episode_at_new_random_start(ros_node, sim):
    sim(mode='lockstep', seed=5)
    probe = Probe(ros_node)
    reset = ros_node.create_client(Trigger, 'room_sim/reset')
    spin_until(ros_node, lambda: reset.service_is_ready(), what='reset service')
    spin_until(ros_node, lambda: ros_node.count_publishers('/room_sim/pose') > 0,
               what='pose publisher')
    starts = []
    for _ in range(3):
        n = len(probe.poses)
        call(ros_node, reset, Trigger.Request())
        spin_until(ros_node, lambda: len(probe.poses) > n, what='pose after reset')
        starts.append(probe.pos())
    assert len({tuple(s) for s in starts}) == 3
    ids = [int(h.frame_id) for h in probe.episodes]
    # one marker per reset, numbered on (the start-up episode's may have been seen too)
    assert ids == sorted(ids) and len(ids) in (3, 4)
    assert ids[-3:] == [ids[-3], ids[-3] + 1, ids[-3] + 2]


def test_realtime_timeout_brakes_to_zero(ros_node, sim):
    sim(mode='realtime', rate_hz=20.0, dt=0.05, cmd_timeout=0.3, seed=1)
    probe = Probe(ros_node)
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: len(probe.poses) > 3, what='realtime frames')
    before = probe.pos()
    spin_until(ros_node, lambda: pub.get_subscription_count() > 0, what='sim subscription')
    cmd = Twist()
    cmd.linear.x = -0.2 if before[0] > 1.0 else 0.2
    pub.publish(cmd)                       # one command, then silence
    n = len(probe.poses)
    spin_until(ros_node, lambda: len(probe.poses) > n + 20, timeout=10, what='20 more frames')
    moved = probe.pos() - before
    # It moved while the command was fresh and then stopped: each tick moves v dt = 0.01 m, and
    # the ticks within cmd_timeout = 0.3 s of the command are 6 at 20 Hz (7 if the one just
    # before it ran late); 2 at least, however loaded the machine.
    ticks = abs(moved[0]) / (0.2 * 0.05)
    assert ticks == pytest.approx(round(ticks), abs=1e-6)
    assert 2 <= round(ticks) <= 7, ticks
    assert moved[1] == 0.0
    last = [tuple(np.round([p.pose.position.x, p.pose.position.y], 9)) for p in probe.poses[-8:]]
    assert len(set(last)) == 1


def test_twist_stamped_parameter(ros_node, sim):
    sim(mode='lockstep', seed=2, cmd_vel_stamped=True)
    probe = Probe(ros_node)
    pub = ros_node.create_publisher(TwistStamped, 'cmd_vel', 10)
    spin_until(ros_node, lambda: pub.get_subscription_count() > 0, what='stamped subscription')
    spin_until(ros_node, lambda: probe.poses, what='a pose (republished in lockstep)')
    p0, n = probe.pos(), len(probe.poses)
    stale = TwistStamped()                 # stamped for a frame that is not the current one
    stale.header.stamp.sec = 12345
    stale.twist.linear.x = 0.5
    pub.publish(stale)                     # lockstep ignores a command for another frame
    cmd = TwistStamped()
    cmd.header.stamp = probe.poses[-1].header.stamp
    cmd.twist.linear.y = 0.5
    pub.publish(cmd)
    spin_until(ros_node, lambda: len(probe.poses) > n and not np.allclose(probe.pos(), p0),
               what='stamped command to move the robot')
    np.testing.assert_allclose(probe.pos() - p0, [0.0, 0.05], atol=1e-9)


def test_lockstep_steps_once_per_frame_on_the_answer_topic(ros_node, sim):
    """With answer_topic, only a command answering the current frame steps the world: not a
    stale answer, not a second answer to the same frame, not cmd_vel (whose stamps are
    publish times)."""
    sim(mode='lockstep', seed=2, answer_topic='planner/answered')
    probe = Probe(ros_node)
    answers = ros_node.create_publisher(TwistStamped, 'planner/answered', 10)
    cmd_vel = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: answers.get_subscription_count() > 0, what='answer subscription')
    spin_until(ros_node, lambda: probe.poses, what='a pose (republished in lockstep)')
    _spin_for(ros_node, 0.5)            # every endpoint of the sim matched, not just the first
    p0, frame = probe.pos(), probe.poses[-1].header.stamp

    def answer(stamp, x=0.0, y=0.0):
        msg = TwistStamped()
        msg.header.stamp = stamp
        msg.twist.linear.x, msg.twist.linear.y = x, y
        answers.publish(msg)
    cmd_vel.publish(Twist(linear=Vector3(x=0.5)))         # not the stepping channel here
    answer(Time(sec=frame.sec - 1, nanosec=frame.nanosec), x=0.5)    # for an older frame
    answer(frame, y=0.5)                                  # the one that steps
    answer(frame, x=-0.5)                                 # the same frame again: stale now
    spin_until(ros_node, lambda: not np.allclose(probe.pos(), p0), what='the answer to step')
    _spin_for(ros_node, 1.2)            # the sim re-sends its frame after 0.5 s: nothing moved
    np.testing.assert_allclose(probe.pos() - p0, [0.0, 0.05], atol=1e-9)
    t0 = frame.sec + frame.nanosec * 1e-9
    later = sorted({stamp(m) for m in probe.poses if stamp(m) > t0 + 1e-6})
    assert later == [pytest.approx(t0 + 0.1)], 'one step, one new frame'


def test_wait_for_reset_holds_the_start_up_frame_until_the_first_reset(ros_node, sim):
    """wait_for_reset (what `wmc eval` sets): a command before the first reset does not step
    the world (the start-up frame is only re-sent); after the reset commands step it."""
    sim(mode='lockstep', seed=2, wait_for_reset=True)
    probe = Probe(ros_node)
    reset = ros_node.create_client(Trigger, 'room_sim/reset')
    pub = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    spin_until(ros_node, lambda: pub.get_subscription_count() > 0 and reset.service_is_ready(),
               what='sim subscription')
    spin_until(ros_node, lambda: probe.poses, what='a pose (re-sent in lockstep)')
    _spin_for(ros_node, 0.5)
    p0 = probe.pos()
    for _ in range(3):
        pub.publish(Twist(linear=Vector3(x=0.5)))
        _spin_for(ros_node, 0.2)
    _spin_for(ros_node, 0.6)
    assert {stamp(m) for m in probe.poses} == {stamp(probe.poses[0])}, 'no step before reset'
    np.testing.assert_allclose(probe.pos(), p0)
    call(ros_node, reset, Trigger.Request())
    spin_until(ros_node, lambda: len(probe.episodes) > 0 and stamp(probe.poses[-1])
               > stamp(probe.poses[0]), what='the reset frame')
    p1, n = probe.pos(), len({stamp(m) for m in probe.poses})
    pub.publish(Twist(linear=Vector3(x=0.5)))
    spin_until(ros_node, lambda: len({stamp(m) for m in probe.poses}) > n, what='a step')
    np.testing.assert_allclose(probe.pos() - p1, [0.05, 0.0], atol=1e-9)


def test_reset_waits_until_reset_subscribers_matched_so_a_late_one_hears_the_start(ros_node,
                                                                                   sim):
    """reset_subscribers (what `wmc eval` sets): a reset waits until that many subscriptions
    to room_sim/episode_start matched; a consumer whose subscription matched late would miss
    the (volatile) episode start and take the episode's first frame as the last one's next."""
    sim(mode='lockstep', seed=2, wait_for_reset=True, reset_subscribers=2)
    probe = Probe(ros_node)
    reset = ros_node.create_client(Trigger, 'room_sim/reset')
    spin_until(ros_node, lambda: reset.service_is_ready() and probe.poses, what='the sim')
    fut = reset.call_async(Trigger.Request())
    _spin_for(ros_node, 1.0)
    assert not fut.done(), 'reset before the second subscriber matched'
    late = []
    ros_node.create_subscription(Header, 'room_sim/episode_start', late.append, 10)
    spin_until(ros_node, fut.done, 10, 'the reset once both matched')
    assert fut.result().success
    spin_until(ros_node, lambda: late and probe.episodes, 5, 'the episode start at both')
    assert stamp(late[-1]) == stamp(probe.episodes[-1]) > 0
