"""What the live fault tests share: a probe that plays camera and listens to every command.

The probe is one rclpy node in the test process, in the test module's own DDS domain. Its
camera publishes like a real driver (sensor-data QoS, best effort) from a timer, so frames keep
arriving while the test waits; ``Probe.cmds`` records every command with the time its
publisher sent it (DDS source timestamp, as time.monotonic()), so a busy test process cannot
make a node look late.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Bool

from room_sim.world import RoomWorld

BAD_OUTPUT = ('Traceback', 'KeyboardInterrupt', 'ExternalShutdownException', 'process has died',
              'never retrieved')


def rgb_msg(rgb: np.ndarray, stamp_ns: int, encoding='rgb8') -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                step=rgb.shape[1] * 3)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.data = rgb.tobytes()
    return msg


class Probe:
    """Camera + command log + optional monitor heartbeat, spun by ``spin``/``until``."""

    def __init__(self, domain: int, cmd_topic='cmd_vel'):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = Node('fault_probe', context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.cmds: list[tuple[float, np.ndarray]] = []      # (sent, [x, y])
        self.node.create_subscription(Twist, cmd_topic, self._on_cmd, QoSProfile(depth=1000))
        self.pub_cam = self.node.create_publisher(Image, 'camera/image_raw',
                                                  qos_profile_sensor_data)
        self.world = RoomWorld(seed=0)
        self.world.reset()
        self.rng = np.random.default_rng(0)
        self.stamp_offset_ns = 0
        self.make_frame = None          # None: a real room frame; else a function -> Image
        self.frames_sent = 0
        self.last_frame_time = None
        self._cam_timer = None
        self._beat_timer = None
        self.pub_stop = None
        self.last_beat_time = None

    # -- spinning --------------------------------------------------------------------------
    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def until(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout} s waiting for {what}')
            self.executor.spin_once(timeout_sec=0.02)

    # -- camera ----------------------------------------------------------------------------
    def camera(self, rate_hz: float | None) -> None:
        """Publish frames at ``rate_hz`` from now on (None: the camera stalls)."""
        if self._cam_timer is not None:
            self.node.destroy_timer(self._cam_timer)
            self._cam_timer = None
        if rate_hz:
            self._cam_timer = self.node.create_timer(1.0 / rate_hz, self.publish_frame)

    def publish_frame(self) -> None:
        if self.make_frame is not None:
            msg = self.make_frame()
        else:
            rgb, _, _ = self.world.step(self.rng.uniform(-0.5, 0.5, 2))
            msg = rgb_msg(rgb, time.time_ns() + self.stamp_offset_ns)
        self.pub_cam.publish(msg)
        self.frames_sent += 1
        self.last_frame_time = time.monotonic()

    # -- image-monitor heartbeat (planner/stop false) ----------------------------------------
    def heartbeat(self, rate_hz: float | None) -> None:
        if self.pub_stop is None:
            self.pub_stop = self.node.create_publisher(Bool, 'planner/stop', 10)
        if self._beat_timer is not None:
            self.node.destroy_timer(self._beat_timer)
            self._beat_timer = None
        if rate_hz:
            self._beat_timer = self.node.create_timer(1.0 / rate_hz, self._beat)

    def _beat(self) -> None:
        self.pub_stop.publish(Bool(data=False))
        self.last_beat_time = time.monotonic()

    # -- commands --------------------------------------------------------------------------
    def _on_cmd(self, msg: Twist, info) -> None:
        delay = max(0.0, (time.time_ns() - info['source_timestamp']) / 1e9)
        self.cmds.append((time.monotonic() - delay, np.array([msg.linear.x, msg.linear.y])))

    def cmds_since(self, t: float) -> list[np.ndarray]:
        return [c for at, c in self.cmds if at >= t]

    def moving_since(self, t: float) -> bool:
        return any(np.abs(c).sum() > 0 for c in self.cmds_since(t))

    def wait_moving(self, timeout=30.0, what='the planner to drive') -> None:
        t = time.monotonic()
        self.until(lambda: self.moving_since(t), timeout, what)

    def zero_after(self, t0: float, hold: float = 0.5, timeout: float = 10.0) -> float:
        """Seconds from ``t0`` to the first command after which everything is zero for
        ``hold`` s (commands keep coming at the planner's rate)."""
        first_zero = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.spin(0.05)
            first_zero = None
            for at, c in self.cmds:
                if at < t0:
                    continue
                if np.abs(c).sum() > 0:
                    first_zero = None
                elif first_zero is None:
                    first_zero = at
            if first_zero is not None and time.monotonic() - first_zero >= hold \
                    and self.cmds[-1][0] > first_zero + hold * 0.8:
                return first_zero - t0
        raise AssertionError(f'commands did not settle at zero within {timeout} s of the event')

    def assert_safe(self, max_speed: float) -> None:
        """Every command so far was finite and within the bounds."""
        arr = np.array([c for _, c in self.cmds]).reshape(-1, 2)
        assert np.all(np.isfinite(arr)), 'a non-finite command was published'
        assert np.all(np.abs(arr) <= max_speed + 1e-9), \
            f'command out of bounds: max |v| {np.abs(arr).max()} > {max_speed}'

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def within(bound: float, measure, what: str) -> float:
    """``measure()`` (a time in s) must come within ``bound``, with one more try if the first
    misses: this 2-core machine now and then stalls a whole process for up to ~1 s while other
    nodes start (bench/bench_stop.py shows the tail, docs/benchmarks.md#stopping). A missing or
    late watchdog misses both tries."""
    first = measure()
    if first <= bound:
        return first
    second = measure()
    assert second <= bound, f'{what}: {first:.2f} s, then {second:.2f} s (bound {bound:.2f} s)'
    return second


def stop_process(proc: subprocess.Popen, sig=signal.SIGINT, group=False, timeout=20.0) -> int:
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return proc.wait(timeout)


def assert_clean_output(text: str) -> None:
    bad = [b for b in BAD_OUTPUT if b in text]
    assert not bad, f'{bad} in the output:\n{text[-3000:]}'
