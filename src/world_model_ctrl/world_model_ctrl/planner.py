"""planner node: CEM over the learned transition and reward models -> velocity commands (MPC).

trigger=timer  plans from the latest belief at ``rate_hz`` (a real robot, realtime sim).
trigger=belief plans once per new belief (lockstep sim: each command advances the world).
Either way a fixed-rate watchdog publishes zero when the belief is older than
``belief_timeout`` or a stop request is active, and zero is published on shutdown.
"""
import signal
import threading
import time

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, Header

from world_model_ctrl.cem import CEMConfig, CEMPlanner, resolve_device
from world_model_ctrl.messages import belief_from_msg, cmd_from_action
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.ssm import WorldModel

# Defaults = config/control.yaml: chosen so planning fits the 100 ms control period on 2 CPU
# cores with the sim and belief running (docs/benchmarks.md).
CEM_PARAMS = {'candidates': 120, 'horizon': 10, 'iterations': 3, 'top_k': 12, 'gamma': 0.99,
              'particles': 1, 'init_std': 0.3, 'min_std': 0.05}


class PlannerNode(Node):
    """belief -> CEM -> cmd_vel; diagnostics on planner/plan_ms and planner/predicted_return."""

    def __init__(self, **kwargs):
        super().__init__('planner', **kwargs)
        self.declare_parameter('checkpoint', 'shipped')
        self.declare_parameter('device', 'cpu')
        self.declare_parameter('trigger', 'timer')
        self.declare_parameter('rate_hz', 10.0)
        self.declare_parameter('belief_timeout', 0.5)
        self.declare_parameter('cmd_vel_stamped', False)
        self.declare_parameter('action_fields', ['linear.x', 'linear.y'])
        self.declare_parameter('max_speed', 0.5)
        self.declare_parameter('seed', 0)
        self.declare_parameter('threads', 1)
        # Score candidates on the transition's mean path (particles carry the belief's
        # uncertainty) or on sampled transitions (PlaNet).
        self.declare_parameter('sample_transitions', False)
        for k, v in CEM_PARAMS.items():
            self.declare_parameter(k, v)
        p = self.get_parameter
        torch.set_num_threads(max(1, p('threads').value))
        self.trigger = p('trigger').value
        if self.trigger not in ('timer', 'belief'):
            raise ValueError(f"trigger must be 'timer' or 'belief', got {self.trigger!r}")
        ckpt = resolve_checkpoint(p('checkpoint').value, 'ssm.pt')
        self.device = resolve_device(p('device').value)
        self.model = WorldModel.from_checkpoint(ckpt, device=self.device)
        self.fields = list(p('action_fields').value)
        self.stamped = p('cmd_vel_stamped').value
        vmax = float(p('max_speed').value)
        cfg = CEMConfig(**{k: p(k).value for k in CEM_PARAMS}, device=str(self.device),
                        action_low=(-vmax,) * len(self.fields),
                        action_high=(vmax,) * len(self.fields))
        self.cem = CEMPlanner(cfg, generator=torch.Generator().manual_seed(p('seed').value))
        self.timeout = p('belief_timeout').value
        sample = bool(p('sample_transitions').value)
        self.rollout = lambda z0, a: self.model.imagine_rewards(z0, a, sample=sample)
        # One plan now, so the first real one is not slowed by torch's lazy set-up.
        z = self.model.config.latent_dim
        with torch.no_grad():
            self.cem.plan(self.rollout, torch.zeros(z), torch.ones(z))
        self.cem.reset()
        self.belief = None                  # (mean, std, header, receive time)
        self.new_belief = False
        self.stop_requested = False
        self.lock = threading.Lock()

        self.pub = self.create_publisher(TwistStamped if self.stamped else Twist, 'cmd_vel', 10)
        self.pub_ms = self.create_publisher(Float32, 'planner/plan_ms', 10)
        self.pub_ret = self.create_publisher(Float32, 'planner/predicted_return', 10)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, 'belief', self.on_belief, 10, callback_group=inputs)
        self.create_subscription(Bool, 'planner/stop', self.on_stop, 10, callback_group=inputs)
        self.create_subscription(Header, 'room_sim/episode_start', self.on_reset, 10,
                                 callback_group=inputs)
        # Planning runs in its own group so incoming beliefs are never blocked behind it.
        self.plan_group = MutuallyExclusiveCallbackGroup()
        self.create_timer(1.0 / p('rate_hz').value, self.on_timer, callback_group=self.plan_group)
        self.get_logger().info(f'planner from {ckpt} on {self.device}, trigger={self.trigger}')

    # -- inputs ----------------------------------------------------------------------------
    def on_belief(self, msg):
        mean, std = belief_from_msg(msg)
        with self.lock:
            self.belief = (mean, std, msg.header, time.monotonic())
            self.new_belief = True
        if self.trigger == 'belief':
            self.plan_and_publish()

    def on_stop(self, msg):
        if msg.data != self.stop_requested:
            self.get_logger().warn('stop requested: holding zero' if msg.data else 'resuming')
        self.stop_requested = msg.data

    def on_reset(self, msg):
        self.cem.reset()

    # -- control ---------------------------------------------------------------------------
    def stale(self) -> bool:
        return self.belief is None or time.monotonic() - self.belief[3] > self.timeout

    def on_timer(self):
        if self.stop_requested or self.stale():
            if self.belief is not None:
                self.cem.reset()
            self.publish(np.zeros(len(self.fields)))
        elif self.trigger == 'timer':
            self.plan_and_publish()

    def plan_and_publish(self):
        with self.lock:
            if self.belief is None:
                return
            mean, std, header, _ = self.belief
            self.new_belief = False
        if self.stop_requested:
            self.publish(np.zeros(len(self.fields)), header)
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            res = self.cem.plan(self.rollout, torch.from_numpy(mean),
                                torch.from_numpy(std))
        self.publish(res.action.cpu().numpy(), header)
        self.pub_ms.publish(Float32(data=(time.perf_counter() - t0) * 1e3))
        self.pub_ret.publish(Float32(data=float(res.predicted_return)))

    def publish(self, action, header=None):
        if header is None:
            header = Header(stamp=self.get_clock().now().to_msg())
        self.pub.publish(cmd_from_action(action, self.fields, self.stamped, header))

    def stop_robot(self):
        """Zero command, e.g. on shutdown; a few times so a lossy link still gets one."""
        for _ in range(3):
            self.publish(np.zeros(len(self.fields)))
            time.sleep(0.01)


def main(args=None):
    # Own the signals: rclpy's default handler would shut the context before the final zero.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = PlannerNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        node.stop_robot()
        node.get_logger().info('stopped: published zero velocity')
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
