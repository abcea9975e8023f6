"""Exploration node for data collection: one command per camera frame, episodes of N steps.

Against a lockstep room_sim it is the clock: every command advances the sim one step. It resets
the sim (``room_sim/reset``) at the start of every episode and exits after ``episodes`` episodes.
Stopped by SIGINT or SIGTERM (any number) it publishes a zero command last and exits 0.
A frame the sim re-sends (lockstep: nothing stepped it for ``republish_period``) means a message
was lost on the way: the explorer sends its command for that frame again, or, still waiting for
the episode_start of a reset after ``RESET_RETRY_S``, resets again, so the loop never stalls.

Action space (``world``): ``overhead`` commands (linear.x, linear.y) within ``max_speed`` per
axis; ``onboard`` commands a differential drive (linear.x, angular.z) within ``action_limits``
= [v_max, w_max]. The policies read the pose (and heading, from the orientation) on
``pose_topic``: PoseStamped (``pose_type: pose``) or nav_msgs/Odometry (``odometry``).
On a real robot, ``reset_service: false``: an episode is ``steps`` commands, then a zero
command and a pause of ``episode_pause`` seconds; the explorer marks each episode's first frame
on ``episode_topic`` (std_msgs/Header, as room_sim/episode_start).
"""
import math
import struct
import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, Twist
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from tqdm import tqdm

from world_model_ctrl.messages import stamp_ns
from world_model_ctrl.policies import (DEFAULT_TURN_RATE, DRIVE_POLICIES, POLICIES, WORLDS,
                                       make_policy)
from world_model_ctrl.spin import EXIT_BAD_CONFIG, init_owning_signals, shutdown_keeping_signals

RESET_RETRY_S = 2.0      # waiting this long for an episode_start after a reset: reset again


def yaw_of(q) -> float:
    """Rotation about z of a quaternion (geometry_msgs/Quaternion)."""
    return math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))


class ExplorerNode(Node):
    """Drives the robot with an exploration policy and resets episodes."""

    def __init__(self, **kwargs):
        super().__init__('explorer', **kwargs)
        self.declare_parameter('policy', 'mix')
        self.declare_parameter('episodes', 10)
        self.declare_parameter('steps', 50)
        self.declare_parameter('seed', 0)
        self.declare_parameter('max_speed', 0.5)
        self.declare_parameter('world', 'overhead')          # action space: overhead | onboard
        # per-field bounds; unset: overhead [max_speed, max_speed], onboard [max_speed, 3.0]
        self.declare_parameter('action_limits', Parameter.Type.DOUBLE_ARRAY)
        self.declare_parameter('dt', 0.1)     # frame period: the drive policies' bump detector
        self.declare_parameter('reset_service', True)   # false: never call room_sim/reset
        self.declare_parameter('episode_pause', 0.5)    # s after each episode without resets
        self.declare_parameter('episode_topic', 'explorer/episode_start')   # without resets
        self.declare_parameter('pose_topic', 'room_sim/pose')
        self.declare_parameter('pose_type', 'pose')     # pose (PoseStamped) | odometry
        self.declare_parameter('progress', True)
        # Wait for this many cmd_vel subscribers (e.g. 2 = sim + recorder) before starting, so
        # the first commands are not sent before a recorder has matched.
        self.declare_parameter('min_cmd_subscribers', 1)
        p = self.get_parameter
        self.world = p('world').value
        if self.world not in WORLDS:
            raise ValueError(f'world must be one of {WORLDS}, got {self.world!r}')
        names = DRIVE_POLICIES if self.world == 'onboard' else POLICIES
        if p('policy').value not in names:
            raise ValueError(f"policy must be one of {names} for world {self.world}, got "
                             f"{p('policy').value!r}")
        self.limits = self._action_limits(p('max_speed').value)
        if not p('dt').value > 0 or not p('episode_pause').value >= 0:
            raise ValueError(f"dt must be > 0 and episode_pause >= 0, got {p('dt').value} and "
                             f"{p('episode_pause').value}")
        self.policy = make_policy(p('policy').value, self.limits[0], p('seed').value,
                                  world=self.world, limits=self.limits, dt=p('dt').value)
        self.episodes, self.steps = p('episodes').value, p('steps').value
        self.use_reset = p('reset_service').value
        self.episode_pause = p('episode_pause').value
        pose_type = p('pose_type').value
        if pose_type not in ('pose', 'odometry'):
            raise ValueError(f"pose_type must be 'pose' or 'odometry', got {pose_type!r}")
        qos = QoSProfile(depth=100)
        # Deep history: with KEEP_LAST a reliable writer drops samples a slow reader (the
        # recorder) has not acknowledged yet once the history is full.
        self.pub_cmd = self.create_publisher(Twist, 'cmd_vel', qos)
        if pose_type == 'odometry':
            try:
                from nav_msgs.msg import Odometry
            except ImportError:
                raise ValueError('pose_type odometry needs nav_msgs (pip install ros-nav-msgs, '
                                 'or a ROS 2 distribution)') from None
            self.create_subscription(Odometry, p('pose_topic').value,
                                     lambda m: self.on_pose(m.pose), qos)
        else:
            self.create_subscription(PoseStamped, p('pose_topic').value, self.on_pose, qos)
        self.pub_marker = None
        if not self.use_reset and p('episode_topic').value:
            self.pub_marker = self.create_publisher(Header, p('episode_topic').value, qos)
        self.create_subscription(PoseStamped, 'room_sim/goal', self.on_goal, qos)
        self.create_subscription(Header, 'room_sim/episode_start', self.on_episode, qos)
        # Only the frame's stamp is needed: take it raw and skip deserialising 12 kB of pixels.
        self.create_subscription(Image, 'camera/image_raw', self.on_image, qos, raw=True)
        self.reset_client = self.create_client(Trigger, 'room_sim/reset') \
            if self.use_reset else None
        self.pos = self.goal = self.heading = None
        self.pause_timer = None
        self.episode_stamp = None     # stamp of the first frame of the current episode
        self.frame_stamp = -1         # newest frame seen
        self.last_stamp = -1          # newest frame acted on
        self.done_episodes = 0
        self.t = 0
        self.waiting_reset = False
        self.reset_asked = 0.0
        self.last_cmd = None          # the last command sent, for a frame the sim re-sent
        self.done = False
        self.bar = tqdm(total=self.episodes * self.steps, unit='step', desc='collect',
                        disable=not p('progress').value, file=sys.stderr)

    def _action_limits(self, max_speed: float) -> tuple:
        try:
            limits = list(self.get_parameter('action_limits').value)
        except ParameterUninitializedException:
            limits = None
        if limits is None:
            limits = [max_speed, max_speed if self.world == 'overhead' else DEFAULT_TURN_RATE]
        if len(limits) != 2 or not all(v > 0 and math.isfinite(v) for v in limits):
            raise ValueError(f'action_limits must be 2 positive numbers, got {limits}')
        if self.world == 'overhead' and limits[0] != limits[1]:
            raise ValueError(f'the overhead action space is a box of max_speed per axis: '
                             f'action_limits must be [m, m], got {limits}')
        return tuple(limits)

    def start(self):
        if self.use_reset:
            self.request_reset()
        else:
            self.begin_episode(-1)

    def begin_episode(self, first_stamp: int):
        """Without resets: a new episode from the next frame newer than the last one acted on."""
        if self.pause_timer is not None:
            self.destroy_timer(self.pause_timer)
            self.pause_timer = None
        self.episode_stamp = first_stamp
        self.waiting_reset = False
        self.t = 0
        self.policy.reset()
        self.act()

    def request_reset(self):
        self.waiting_reset = True
        self.reset_asked = time.monotonic()
        self.reset_client.call_async(Trigger.Request())

    def on_pose(self, msg):
        """PoseStamped, or an Odometry's PoseWithCovariance: both have .pose."""
        self.pos = np.array([msg.pose.position.x, msg.pose.position.y])
        self.heading = yaw_of(msg.pose.orientation)

    def on_goal(self, msg):
        self.goal = np.array([msg.pose.position.x, msg.pose.position.y])

    def on_episode(self, msg):
        if self.waiting_reset and self.use_reset:
            self.episode_stamp = stamp_ns(msg.stamp)
            self.waiting_reset = False
            self.t = 0
            self.policy.reset()
            self.act()           # the episode's first frame may have arrived before its marker

    def on_image(self, cdr: bytes):
        # CDR: 4-byte encapsulation header, then header.stamp = (int32 sec, uint32 nanosec).
        sec, nanosec = struct.unpack_from('<iI' if cdr[1] == 1 else '>iI', cdr, 4)
        stamp = sec * 1_000_000_000 + nanosec
        resent = stamp <= self.frame_stamp
        self.frame_stamp = max(self.frame_stamp, stamp)
        self.act(resent)

    def act(self, resent: bool = False):
        stamp = self.frame_stamp
        if self.use_reset and resent and not self.done:
            # The lockstep sim re-sends its frame when nothing stepped it for a while: what
            # this node sent, or the sim's answer to it, was lost (a subscription that had
            # not matched yet). Without this the loop waits forever.
            if self.waiting_reset and time.monotonic() - self.reset_asked > RESET_RETRY_S:
                self.get_logger().warning('no episode_start after room_sim/reset: resetting '
                                          'again')
                self.request_reset()
            elif not self.waiting_reset and self.last_cmd is not None \
                    and stamp == self.last_stamp:
                self.get_logger().warning('the sim re-sent the frame this node answered: '
                                          'sending the command again',
                                          throttle_duration_sec=5.0)
                self.pub_cmd.publish(self.last_cmd)
            return
        if self.done or self.waiting_reset or self.episode_stamp is None \
                or stamp <= self.last_stamp or stamp < self.episode_stamp:
            return                   # repeated frame, or one from before the reset
        self.last_stamp = stamp
        if self.t >= self.steps:
            self.done_episodes += 1
            if not self.use_reset:       # stop, and wait a moment: a visible episode boundary
                self.pub_cmd.publish(Twist())
            if self.done_episodes >= self.episodes:
                self.done = True
                self.bar.close()
            elif self.use_reset:
                self.request_reset()
            else:
                self.waiting_reset = True                      # no acting while paused
                self.pause_timer = self.create_timer(
                    max(self.episode_pause, 1e-3), lambda: self.begin_episode(stamp + 1))
            return
        if self.t == 0 and self.pub_marker is not None:
            self.pub_marker.publish(Header(stamp=Time(sec=stamp // 1_000_000_000,
                                                      nanosec=stamp % 1_000_000_000),
                                           frame_id=str(self.done_episodes)))
        cmd = Twist()
        if self.world == 'onboard':
            a = self.policy.act(self.pos, self.goal, self.heading)
            cmd.linear.x, cmd.angular.z = float(a[0]), float(a[1])
        else:
            a = self.policy.act(self.pos, self.goal)
            cmd.linear.x, cmd.linear.y = float(a[0]), float(a[1])
        self.pub_cmd.publish(cmd)
        self.last_cmd = cmd
        self.t += 1
        self.bar.update(1)


def main(args=None) -> int:
    stop = init_owning_signals(args)
    try:
        node = ExplorerNode()
    except Exception as e:      # bad parameter: one line, no traceback
        print(f'[ERROR] [explorer]: cannot start: {e}', file=sys.stderr)
        shutdown_keeping_signals()
        return EXIT_BAD_CONFIG
    try:
        while node.use_reset and not stop.is_set() \
                and not node.reset_client.wait_for_service(timeout_sec=1.0):
            node.get_logger().info('waiting for room_sim/reset ...')
        # Give DDS a moment to match the sim's publishers so the first frame is not missed.
        need = node.get_parameter('min_cmd_subscribers').value
        while not stop.is_set() and (
                node.count_publishers(node.resolve_topic_name('camera/image_raw')) == 0
                or node.pub_cmd.get_subscription_count() < need):
            rclpy.spin_once(node, timeout_sec=0.1)
        if not stop.is_set():
            node.start()
        while rclpy.ok() and not node.done and not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        if stop.is_set():           # interrupted: the robot's last command is zero
            node.pub_cmd.publish(Twist())
            node.pub_cmd.wait_for_all_acked(Duration(seconds=1.0))
        return 0
    finally:
        node.destroy_node()
        shutdown_keeping_signals()


if __name__ == '__main__':
    raise SystemExit(main())
