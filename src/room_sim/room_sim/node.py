"""ROS 2 node around the ROS-free worlds: commands in, camera frames and rewards out.

Worlds (``world`` parameter): ``overhead`` (RoomWorld: top-down camera, holonomic robot, cmd_vel
linear.x, linear.y) or ``onboard`` (OnboardWorld: forward camera on a differential-drive robot,
cmd_vel linear.x, angular.z; room_sim/pose carries its heading as a yaw quaternion).

Modes:
  realtime  steps on a timer at ``rate_hz`` with the latest command (zero after ``cmd_timeout``).
  lockstep  one step per received command, publishes /clock (sim time), as fast as the consumer.
            With ``answer_topic`` set (e.g. the planner's planner/answered, TwistStamped) it
            steps on that topic instead of cmd_vel: once per command stamped with the current
            frame's stamp, so a command for an older frame never steps the world twice, while
            cmd_vel keeps its ROS meaning (stamped with the time of publishing).
            With ``reset_subscribers`` > 0 a reset waits until that many subscriptions to
            room_sim/episode_start matched (what `wmc eval` sets: its belief, planner and itself).
"""
import signal
import sys
import threading
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, Header
from std_srvs.srv import Trigger

from room_sim.onboard import OnboardConfig
from room_sim.worlds import WORLDS, make_world

# ROS parameter name -> WorldConfig field (only scalars; ``goal`` is an optional double array).
WORLD_PARAMS = {
    'room_size': 2.0, 'wall': 0.1, 'dt': 0.1, 'max_speed': 0.5, 'success_radius': 0.1,
    'image_size': 64, 'noise_std': 0.0, 'random_goal': False,
}
# ... and OnboardConfig fields, for ``world: onboard`` (defaults from OnboardConfig).
ONBOARD_PARAMS = {name: getattr(OnboardConfig, name) for name in (
    'room_size', 'wall', 'dt', 'max_speed', 'max_turn_rate', 'robot_radius', 'success_radius',
    'image_size', 'fov_deg', 'camera_height', 'noise_std', 'random_goal')}
PARAMS_OF_WORLD = {'overhead': WORLD_PARAMS, 'onboard': ONBOARD_PARAMS}
RESET_WAIT_S = 10.0     # reset_subscribers: the longest a reset waits for them


def time_from_ns(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def yaw_quaternion(yaw: float) -> tuple[float, float]:
    """(z, w) of the unit quaternion of a rotation by ``yaw`` about z."""
    return float(np.sin(yaw / 2)), float(np.cos(yaw / 2))


class RoomSimNode(Node):
    """Publishes camera/image_raw, reward (unless publish_reward is false), room_sim/pose,
    room_sim/goal and, with publish_odom, odom; takes cmd_vel (or, in lockstep, answer_topic)."""

    def __init__(self, **kwargs):
        super().__init__('room_sim', **kwargs)
        self.declare_parameter('world', 'overhead')
        self.world_name = self.get_parameter('world').value
        if self.world_name not in WORLDS:
            raise ValueError(f"world must be one of {sorted(WORLDS)}, got {self.world_name!r}")
        self.onboard = self.world_name == 'onboard'
        world_params = PARAMS_OF_WORLD[self.world_name]
        for name, default in world_params.items():
            self.declare_parameter(name, default)
        self.declare_parameter('goal', Parameter.Type.DOUBLE_ARRAY)
        self.declare_parameter('start', Parameter.Type.DOUBLE_ARRAY)   # unset = random starts
        self.declare_parameter('seed', 0)
        self.declare_parameter('mode', 'realtime')
        self.declare_parameter('rate_hz', 10.0)
        self.declare_parameter('cmd_timeout', 0.5)
        self.declare_parameter('cmd_vel_stamped', False)
        # lockstep: step on TwistStamped commands on this topic that answer the current frame
        # (header stamp = its stamp), not on cmd_vel; '' = step on cmd_vel
        self.declare_parameter('answer_topic', '')
        # lockstep: no command steps the world before the first room_sim/reset (the start-up
        # frame waits, re-sent): for drivers that begin every episode with a reset
        self.declare_parameter('wait_for_reset', False)
        # a reset first waits (up to RESET_WAIT_S) until room_sim/episode_start has this many
        # matched subscriptions: a consumer that matched late would miss the episode's start
        # (volatile), filter and plan its first frames as the last episode's next steps
        self.declare_parameter('reset_subscribers', 0)
        self.declare_parameter('frame_id', 'room')
        self.declare_parameter('republish_period', 0.5)
        self.declare_parameter('qos_depth', 100)
        self.declare_parameter('publish_reward', True)     # false: no reward topic (a robot)
        self.declare_parameter('publish_odom', False)      # nav_msgs/Odometry on odom
        self.declare_parameter('odom_frame_id', 'odom')
        self.declare_parameter('base_frame_id', 'base_link')
        p = self.get_parameter
        for name in ('rate_hz', 'cmd_timeout', 'republish_period', 'qos_depth'):
            if not p(name).value > 0:
                raise ValueError(f'parameter {name} must be > 0, got {p(name).value}')
        goal, self.start = (self._optional(name) for name in ('goal', 'start'))
        params = {k: p(k).value for k in world_params}
        self.mode = p('mode').value
        if self.mode not in ('realtime', 'lockstep'):
            raise ValueError(f"mode must be 'realtime' or 'lockstep', got {self.mode!r}")
        answer_topic = p('answer_topic').value
        if answer_topic and self.mode != 'lockstep':
            raise ValueError(f'answer_topic ({answer_topic!r}) is for mode lockstep; realtime '
                             "steps on a timer with the latest cmd_vel: set answer_topic ''")
        self.frame_id = p('frame_id').value
        self.cmd_timeout = p('cmd_timeout').value
        self.world = make_world(self.world_name, {'goal': list(goal) if goal else None,
                                                  **params}, seed=p('seed').value)
        self.odom_frame_id = p('odom_frame_id').value
        self.base_frame_id = p('base_frame_id').value

        qos = QoSProfile(depth=p('qos_depth').value)
        self.pub_image = self.create_publisher(Image, 'camera/image_raw', qos)
        self.pub_reward = self.create_publisher(Float32, 'reward', qos) \
            if p('publish_reward').value else None
        self.pub_odom = None
        if p('publish_odom').value:
            try:
                from nav_msgs.msg import Odometry
            except ImportError:
                raise ValueError('publish_odom needs nav_msgs (pip install ros-nav-msgs, or '
                                 'a ROS 2 distribution)') from None
            self.Odometry = Odometry
            self.pub_odom = self.create_publisher(Odometry, 'odom', qos)
        self.pub_pose = self.create_publisher(PoseStamped, 'room_sim/pose', qos)
        self.pub_goal = self.create_publisher(PoseStamped, 'room_sim/goal', qos)
        self.pub_episode = self.create_publisher(Header, 'room_sim/episode_start', qos)
        self.pub_clock = self.create_publisher(Clock, '/clock', 10) if self.mode == 'lockstep' \
            else None
        if answer_topic:
            self.create_subscription(TwistStamped, answer_topic, self.on_cmd, 10)
        else:
            stamped = p('cmd_vel_stamped').value
            self.create_subscription(TwistStamped if stamped else Twist, 'cmd_vel',
                                     self.on_cmd, 10)
        self.create_service(Trigger, 'room_sim/reset', self.on_reset)
        self.add_on_set_parameters_callback(self.on_params)

        self.cmd = np.zeros(2)
        self.cmd_time = None
        self.sim_ns = 0           # lockstep sim time: steps * dt, monotonic across episodes
        self.last_stamp = None
        self.new_episode = True
        self.holding = bool(p('wait_for_reset').value) and self.mode == 'lockstep'
        frame = self.world.reset(start=self.start)
        if self.mode == 'realtime':
            self.create_timer(1.0 / p('rate_hz').value, self.on_tick)
        else:
            self.republish_ns = p('republish_period').value * 1e9
            self.create_timer(p('republish_period').value / 2, self.on_republish)
            self.last_publish = self.get_clock().now()
            self.publish_frame(frame)

    def _optional(self, name):
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:
            return None
        if value is None:
            return None
        if name == 'start' and self.onboard:
            if len(value) not in (2, 3):
                raise ValueError(f'start must be [x, y] (m) or [x, y, heading] (m, m, rad), '
                                 f'got {list(value)}')
        elif len(value) != 2:
            raise ValueError(f'{name} must be [x, y] in metres, got {list(value)}')
        return list(value) if value is not None else None

    # -- inputs ----------------------------------------------------------------------------
    def on_params(self, params):
        from rcl_interfaces.msg import SetParametersResult
        for prm in params:
            if prm.name == 'seed':   # takes effect at the next reset
                self.world.rng = np.random.default_rng(prm.value)
        return SetParametersResult(successful=True)

    def on_cmd(self, msg):
        if self.mode == 'lockstep' and isinstance(msg, TwistStamped) \
                and (msg.header.stamp.sec, msg.header.stamp.nanosec) != \
                (self.last_stamp.sec, self.last_stamp.nanosec):
            # A stamped command answers one frame (on answer_topic; on cmd_vel a sender that
            # stamps with the frame's stamp): one planned for an older frame (e.g. the last
            # episode's) would step the world twice per frame. Ignore it.
            return
        twist = msg.twist if isinstance(msg, TwistStamped) else msg
        cmd = np.array([twist.linear.x, twist.angular.z if self.onboard else twist.linear.y])
        if not np.all(np.isfinite(cmd)):
            self.get_logger().warning(f'ignoring non-finite command {cmd}')
            return
        if self.holding:                        # wait_for_reset: not before the first reset
            return
        self.cmd, self.cmd_time = cmd, self.get_clock().now()
        if self.mode == 'lockstep':
            frame, _, _ = self.world.step(self.cmd)
            self.sim_ns += int(round(self.world.cfg.dt * 1e9))
            self.publish_frame(frame)

    def on_reset(self, request, response):
        self.wait_for_episode_subscribers()
        frame = self.world.reset(start=self.start)
        self.cmd, self.cmd_time = np.zeros(2), None
        self.new_episode, self.holding = True, False
        if self.mode == 'lockstep':
            self.sim_ns += int(round(self.world.cfg.dt * 1e9))
        self.publish_frame(frame)
        response.success = True
        response.message = (f'episode {self.world.episode} start '
                            f'{self.world.pos[0]:.3f} {self.world.pos[1]:.3f}'
                            + (f' {self.world.heading:.3f}' if self.onboard else ''))
        return response

    def wait_for_episode_subscribers(self):
        need = self.get_parameter('reset_subscribers').value
        deadline = time.monotonic() + RESET_WAIT_S
        while self.pub_episode.get_subscription_count() < need \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        have = self.pub_episode.get_subscription_count()
        if have < need:
            self.get_logger().warning(
                f'reset: room_sim/episode_start has {have} of reset_subscribers={need} '
                f'subscriptions after {RESET_WAIT_S:.0f} s; resetting anyway')

    # -- stepping --------------------------------------------------------------------------
    def on_tick(self):
        stale = self.cmd_time is None or \
            (self.get_clock().now() - self.cmd_time).nanoseconds > self.cmd_timeout * 1e9
        frame, _, _ = self.world.step(np.zeros(2) if stale else self.cmd)   # timed out: brake
        self.publish_frame(frame)

    def on_republish(self):
        # Lockstep: a lost frame would stall the consumer forever, so resend it (same stamp).
        if (self.get_clock().now() - self.last_publish).nanoseconds > self.republish_ns:
            self.publish_frame(self.last_frame, repeat=True)

    # -- outputs ---------------------------------------------------------------------------
    def publish_frame(self, frame: np.ndarray, repeat: bool = False):
        if not repeat:
            if self.mode == 'lockstep':
                self.last_stamp = time_from_ns(self.sim_ns)
                self.pub_clock.publish(Clock(clock=self.last_stamp))
            else:
                self.last_stamp = self.get_clock().now().to_msg()
        stamp, w = self.last_stamp, self.world
        if self.new_episode and not repeat:
            self.pub_episode.publish(Header(stamp=stamp, frame_id=str(w.episode)))
            self.new_episode = False
        header = Header(stamp=stamp, frame_id=self.frame_id)
        if self.pub_reward is not None:
            self.pub_reward.publish(Float32(data=w.reward()))
        qz, qw = yaw_quaternion(w.heading) if self.onboard else (0.0, 1.0)
        for pub, xy, (z, q) in ((self.pub_pose, w.pos, (qz, qw)),
                                (self.pub_goal, w.goal, (0.0, 1.0))):
            msg = PoseStamped(header=header)
            msg.pose.position.x, msg.pose.position.y = float(xy[0]), float(xy[1])
            msg.pose.orientation.z, msg.pose.orientation.w = z, q
            pub.publish(msg)
        if self.pub_odom is not None:
            self.publish_odom(stamp, qz, qw)
        self.last_frame = frame
        img = Image(header=header, height=frame.shape[0], width=frame.shape[1],
                    encoding='rgb8', is_bigendian=0, step=frame.shape[1] * 3)
        img.data = frame.tobytes()
        self.pub_image.publish(img)
        if self.mode == 'lockstep':
            self.last_publish = self.get_clock().now()

    def publish_odom(self, stamp, qz: float, qw: float):
        """Odometry = ground truth in the room's coordinates (no drift), twist in base_link:
        the velocity command applied in the last step, after clipping (zero after a reset)."""
        w = self.world
        msg = self.Odometry()
        msg.header.stamp, msg.header.frame_id = stamp, self.odom_frame_id
        msg.child_frame_id = self.base_frame_id
        msg.pose.pose.position.x, msg.pose.pose.position.y = float(w.pos[0]), float(w.pos[1])
        msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = qz, qw
        vel = w.velocity
        if self.onboard:
            msg.twist.twist.linear.x, msg.twist.twist.angular.z = float(vel[0]), float(vel[1])
        else:          # no heading: base_link is aligned with odom
            msg.twist.twist.linear.x, msg.twist.twist.linear.y = float(vel[0]), float(vel[1])
        self.pub_odom.publish(msg)


def main(args=None) -> int:
    """Spin until SIGINT/SIGTERM (any number of them), then exit 0 without a traceback; a bad
    parameter is one line and exit code 2 (as world_model_ctrl.spin.run_node, which this
    package cannot import)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as e:
        print(f'[ERROR] [room_sim]: cannot start: {e}', file=sys.stderr)
        return 2
    node = None
    try:
        try:
            node = RoomSimNode()
        except Exception as e:
            print(f'[ERROR] [room_sim]: cannot start: {e}', file=sys.stderr)
            return 2
        while not stop.is_set() and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(uninstall_handlers=False)   # keep ours: a 2nd signal must not kill
        # ... nor one during interpreter exit, when Python puts back the default handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == '__main__':
    raise SystemExit(main())
