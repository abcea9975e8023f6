"""pose_reward node: a real robot's reward from odometry, -distance to a goal.

For every ``odom`` message (nav_msgs/Odometry) it publishes ``reward`` (std_msgs/Float32)
= -||p - goal|| / distance_scale, p = pose.pose.position (x, y). The goal, [x, y] in the
odometry frame, comes from the ``goal`` parameter (also settable at run time with
``ros2 param set``) or from a geometry_msgs/PoseStamped on ``goal_pose`` (RViz's "2D Goal
Pose"); the newest wins. No TF is applied: a goal_pose in another frame than the odometry's is
used as is, with a warning. Until a goal is known no reward is published (throttled warning).
Odometry with a NaN/inf position publishes nothing (throttled warning). Counts and the goal are
reported on /diagnostics once a second.

    pose_reward --ros-args -p goal:="[2.0, 1.0]" -p distance_scale:=1.0 -r odom:=/base/odom
"""
import math
import time

from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32

from world_model_ctrl.diagnostics import OK, WARN, Diagnostics
from world_model_ctrl.spin import run_node

STALE_S = 2.0      # odometry older than this is reported as stopped


def parse_goal(value) -> tuple:
    """[x, y] (ints or floats, finite) -> (x, y); anything else -> ValueError."""
    if isinstance(value, (str, bytes, bool)) or not hasattr(value, '__len__') \
            or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) \
            or not all(math.isfinite(v) for v in value):
        raise ValueError(f'parameter goal must be [x, y] (finite numbers, metres in the '
                         f'odometry frame), got {value!r}')
    return float(value[0]), float(value[1])


def fmt_goal(goal: tuple) -> str:
    return f'[{goal[0]:g}, {goal[1]:g}]'


def pose_reward(x: float, y: float, goal: tuple, distance_scale: float) -> float:
    """-||(x, y) - goal|| / distance_scale."""
    return -math.hypot(x - goal[0], y - goal[1]) / distance_scale


class PoseRewardNode(Node):
    """odom (+ goal, goal_pose) -> reward, /diagnostics."""

    def __init__(self, **kwargs):
        super().__init__('pose_reward', **kwargs)
        any_number = ParameterDescriptor(dynamic_typing=True)    # [2, 1] as well as [2.0, 1.0]
        self.declare_parameter('goal', None, any_number)
        self.declare_parameter('distance_scale', 1.0,
                               ParameterDescriptor(dynamic_typing=True, read_only=True))
        p = self.get_parameter
        scale = p('distance_scale').value
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f'parameter distance_scale must be a finite number > 0, '
                             f'got {scale!r}')
        self.scale = float(scale)
        goal = p('goal').value
        self.goal = None if goal is None else parse_goal(goal)
        self.goal_frame = ''          # '' = the odometry's frame (a goal from the parameter)
        self.frame_checked = True
        self.counts = dict(odom=0, rewards=0, nonfinite_odom=0, without_goal=0, goal_poses=0)
        self.last_reward = math.nan
        self.last_odom = None         # time.monotonic() of the newest odometry
        self.odom_frame = ''
        self.pub = self.create_publisher(Float32, 'reward', 10)
        # Best effort matches reliable and best-effort odometry publishers alike.
        self.create_subscription(Odometry, 'odom', self.on_odom,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.create_subscription(PoseStamped, 'goal_pose', self.on_goal_pose, 10)
        self.add_on_set_parameters_callback(self.on_params)
        self.diag = Diagnostics(self, hardware_id='odometry')
        self.create_timer(1.0, self.publish_diagnostics)
        topics = ', '.join(self.resolve_topic_name(t) for t in ('odom', 'goal_pose', 'reward'))
        self.get_logger().info(
            f'reward = -distance / {self.scale:g} ({topics}); goal '
            + (fmt_goal(self.goal) if self.goal else
               f'not set: no reward until one arrives on {self.resolve_topic_name("goal_pose")} '
               '(RViz "2D Goal Pose") or the goal parameter is set'))

    def set_goal(self, goal: tuple, frame: str, source: str):
        self.goal, self.goal_frame, self.frame_checked = goal, frame, not frame
        self.get_logger().info(f'goal {fmt_goal(goal)} from {source}')
        self.check_frame()

    def check_frame(self):
        """Once per goal_pose goal, as soon as the odometry's frame is known."""
        if self.frame_checked or not self.odom_frame:
            return
        self.frame_checked = True
        if self.goal_frame != self.odom_frame:
            self.get_logger().warning(
                f"goal_pose is in frame '{self.goal_frame}', odometry in '{self.odom_frame}': "
                'no TF is applied, the goal is used as odometry coordinates')

    def on_params(self, params):
        for prm in params:
            if prm.name == 'goal':
                try:
                    goal = parse_goal(prm.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self.set_goal(goal, '', 'the goal parameter')
        return SetParametersResult(successful=True)

    def on_goal_pose(self, msg: PoseStamped):
        pos = msg.pose.position
        try:
            goal = parse_goal([pos.x, pos.y])
        except ValueError:
            self.get_logger().warning(f'ignoring goal_pose with a non-finite position '
                                      f'({pos.x}, {pos.y})', throttle_duration_sec=5.0)
            return
        self.counts['goal_poses'] += 1
        self.set_goal(goal, msg.header.frame_id, 'goal_pose')   # no frame_id: odometry's

    def on_odom(self, msg: Odometry):
        self.counts['odom'] += 1
        self.last_odom = time.monotonic()
        self.odom_frame = msg.header.frame_id
        x, y = msg.pose.pose.position.x, msg.pose.pose.position.y
        if not (math.isfinite(x) and math.isfinite(y)):
            self.counts['nonfinite_odom'] += 1
            self.get_logger().warning(
                f'odometry with a non-finite position ({x}, {y}): no reward '
                f"({self.counts['nonfinite_odom']} so far)", throttle_duration_sec=5.0)
            return
        if self.goal is None:
            self.counts['without_goal'] += 1
            self.get_logger().warning(
                'no goal yet: no reward published; set the goal parameter or publish a '
                f'PoseStamped on {self.resolve_topic_name("goal_pose")}',
                throttle_duration_sec=10.0)
            return
        self.check_frame()
        self.last_reward = pose_reward(x, y, self.goal, self.scale)
        self.pub.publish(Float32(data=self.last_reward))
        self.counts['rewards'] += 1

    def publish_diagnostics(self):
        if self.goal is None:
            level, message = WARN, 'no goal: no reward published'
        elif self.last_odom is None:
            level, message = WARN, 'no odometry yet'
        elif time.monotonic() - self.last_odom > STALE_S:
            level, message = WARN, 'odometry stopped'
        else:
            level, message = OK, 'publishing reward'
        goal = 'none' if self.goal is None else fmt_goal(self.goal)
        self.diag.publish(level, message, {
            **{k: str(v) for k, v in self.counts.items()},
            'goal': goal, 'goal_frame': self.goal_frame or self.odom_frame,
            'distance_scale': self.scale, 'last_reward': self.last_reward})


def main(args=None):
    return run_node(PoseRewardNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
