"""Exploration node for data collection: one command per camera frame, episodes of N steps.

Against a lockstep room_sim it is the clock: every command advances the sim one step. It resets
the sim (``room_sim/reset``) at the start of every episode and exits after ``episodes`` episodes.
Stopped by SIGINT or SIGTERM (any number) it publishes a zero command last and exits 0.
"""
import struct
import sys

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, Twist
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from tqdm import tqdm

from world_model_ctrl.policies import POLICIES, make_policy
from world_model_ctrl.spin import EXIT_BAD_CONFIG, init_owning_signals, shutdown_keeping_signals


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class ExplorerNode(Node):
    """Drives the robot with an exploration policy and resets episodes."""

    def __init__(self, **kwargs):
        super().__init__('explorer', **kwargs)
        self.declare_parameter('policy', 'mix')
        self.declare_parameter('episodes', 10)
        self.declare_parameter('steps', 50)
        self.declare_parameter('seed', 0)
        self.declare_parameter('max_speed', 0.5)
        self.declare_parameter('progress', True)
        # Wait for this many cmd_vel subscribers (e.g. 2 = sim + recorder) before starting, so
        # the first commands are not sent before a recorder has matched.
        self.declare_parameter('min_cmd_subscribers', 1)
        p = self.get_parameter
        if p('policy').value not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {p('policy').value!r}")
        self.policy = make_policy(p('policy').value, p('max_speed').value, p('seed').value)
        self.episodes, self.steps = p('episodes').value, p('steps').value
        qos = QoSProfile(depth=100)
        # Deep history: with KEEP_LAST a reliable writer drops samples a slow reader (the
        # recorder) has not acknowledged yet once the history is full.
        self.pub_cmd = self.create_publisher(Twist, 'cmd_vel', qos)
        self.create_subscription(PoseStamped, 'room_sim/pose', self.on_pose, qos)
        self.create_subscription(PoseStamped, 'room_sim/goal', self.on_goal, qos)
        self.create_subscription(Header, 'room_sim/episode_start', self.on_episode, qos)
        # Only the frame's stamp is needed: take it raw and skip deserialising 12 kB of pixels.
        self.create_subscription(Image, 'camera/image_raw', self.on_image, qos, raw=True)
        self.reset_client = self.create_client(Trigger, 'room_sim/reset')
        self.pos = self.goal = None
        self.episode_stamp = None     # stamp of the first frame of the current episode
        self.frame_stamp = -1         # newest frame seen
        self.last_stamp = -1          # newest frame acted on
        self.done_episodes = 0
        self.t = 0
        self.waiting_reset = False
        self.done = False
        self.bar = tqdm(total=self.episodes * self.steps, unit='step', desc='collect',
                        disable=not p('progress').value, file=sys.stderr)

    def start(self):
        self.request_reset()

    def request_reset(self):
        self.waiting_reset = True
        self.reset_client.call_async(Trigger.Request())

    def on_pose(self, msg):
        self.pos = np.array([msg.pose.position.x, msg.pose.position.y])

    def on_goal(self, msg):
        self.goal = np.array([msg.pose.position.x, msg.pose.position.y])

    def on_episode(self, msg):
        if self.waiting_reset:
            self.episode_stamp = stamp_ns(msg.stamp)
            self.waiting_reset = False
            self.t = 0
            self.policy.reset()
            self.act()           # the episode's first frame may have arrived before its marker

    def on_image(self, cdr: bytes):
        # CDR: 4-byte encapsulation header, then header.stamp = (int32 sec, uint32 nanosec).
        sec, nanosec = struct.unpack_from('<iI' if cdr[1] == 1 else '>iI', cdr, 4)
        self.frame_stamp = max(self.frame_stamp, sec * 1_000_000_000 + nanosec)
        self.act()

    def act(self):
        stamp = self.frame_stamp
        if self.done or self.waiting_reset or self.episode_stamp is None \
                or stamp <= self.last_stamp or stamp < self.episode_stamp:
            return                   # repeated frame, or one from before the reset
        self.last_stamp = stamp
        if self.t >= self.steps:
            self.done_episodes += 1
            if self.done_episodes >= self.episodes:
                self.done = True
                self.bar.close()
            else:
                self.request_reset()
            return
        a = self.policy.act(self.pos, self.goal)
        cmd = Twist()
        cmd.linear.x, cmd.linear.y = float(a[0]), float(a[1])
        self.pub_cmd.publish(cmd)
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
        while not stop.is_set() and not node.reset_client.wait_for_service(timeout_sec=1.0):
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
