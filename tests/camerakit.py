"""A camera that behaves like a real driver, in a process of its own, and a measurement of
what reaches the belief node (tests/test_camera_transport.py, bench/bench_camera.py).

The camera publishes room frames scaled up to WIDTHxHEIGHT bgr8 at a rate, best effort or
reliable, stamped with the wall clock, in its own process (a driver is another process, with
its own middleware settings: ``profile=False`` starts it without the shipped Fast DDS profile,
as a driver launched by hand would be). Nothing here reads the camera's own counts during the
run: the belief node's /diagnostics counters are what is measured.

    python tests/camerakit.py --width 640 --height 480 --rate 15 --reliability best_effort \
        --seconds 10      # prints {"sent_ns": [...]} at the end
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# -- the camera process ----------------------------------------------------------------------
def _frames(width: int, height: int, n: int = 30) -> list[bytes]:
    """``n`` bgr8 room frames (the robot moving) scaled to width x height."""
    import cv2

    from room_sim.world import RoomWorld
    world = RoomWorld(seed=0)
    world.reset()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        rgb, _, _ = world.step(rng.uniform(-0.5, 0.5, 2))
        big = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_NEAREST)
        out.append(np.ascontiguousarray(big[..., ::-1]).tobytes())
    return out


def camera_main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--rate', type=float, default=15.0)
    ap.add_argument('--reliability', choices=('best_effort', 'reliable'), default='best_effort')
    ap.add_argument('--seconds', type=float, default=10.0)
    ap.add_argument('--topic', default='camera/image_raw')
    ap.add_argument('--stamp-offset', type=float, default=0.0, help='s added to header stamps')
    a = ap.parse_args(argv)
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = Node('test_camera')
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE
                     if a.reliability == 'reliable' else ReliabilityPolicy.BEST_EFFORT)
    pub = node.create_publisher(Image, a.topic, qos)
    frames = _frames(a.width, a.height)
    # Discovery takes a second or two; what is measured is delivery once the camera and its
    # subscriber know each other (frames sent before that are lost by any middleware).
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    msg = Image(height=a.height, width=a.width, encoding='bgr8', step=a.width * 3)
    msg.header.frame_id = 'camera'
    sent = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.seconds:
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(
            now + int(a.stamp_offset * 1e9), 1_000_000_000)
        msg.data = frames[len(sent) % len(frames)]
        pub.publish(msg)
        sent.append(now)
        time.sleep(max(0.0, t0 + len(sent) / a.rate - time.monotonic()))
    print(json.dumps({'sent_ns': sent}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def start_camera(env: dict, profile: bool = True, **kw) -> subprocess.Popen:
    """The camera process; ``profile`` False removes the Fast DDS profile from its env."""
    env = dict(env)
    if not profile:
        env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    args = [sys.executable, __file__]
    for k, v in kw.items():
        args += [f'--{k.replace("_", "-")}', str(v)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


# -- the measurement --------------------------------------------------------------------------
class DiagLog:
    """Every /diagnostics status of a node ('world_model_ctrl: /belief' -> 'belief'), with its stamp, and
    the arrival (wall clock) and header stamp of every belief message."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        self.statuses: dict[str, list[tuple[int, dict]]] = {}
        self.beliefs: list[tuple[int, int]] = []        # (arrival ns, frame stamp ns)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)
        node.create_subscription(Image, 'belief', self._on_belief, 50)

    def _on_diag(self, msg):
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        for s in msg.status:
            self.statuses.setdefault(s.name.rsplit('/', 1)[-1], []).append(
                (stamp, {kv.key: kv.value for kv in s.values}))

    def _on_belief(self, msg):
        self.beliefs.append((time.time_ns(),
                             msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec))

    def count(self, node: str, key: str) -> list[tuple[int, float]]:
        return [(t, float(v[key])) for t, v in self.statuses.get(node, []) if key in v]


def delivered(log: DiagLog, sent_ns: list[int]) -> dict:
    """Fraction of the frames sent after the belief's first report of a received frame that
    it received (its frames_received counter), and its camera -> belief latency."""
    counts = log.count('belief', 'frames_received')
    start = next(((t, c) for t, c in counts if c > 0), None)
    if start is None:
        return {'delivered': 0.0, 'sent': len(sent_ns), 'received': 0}
    t0, c0 = start
    c1 = counts[-1][1]
    sent = sum(1 for t in sent_ns if t > t0)
    lat = np.array([(a - s) / 1e6 for a, s in log.beliefs if s > t0])
    out = {'delivered': round(min(1.0, (c1 - c0) / max(1, sent)), 4), 'sent': sent,
           'received': int(c1 - c0)}
    if len(lat):
        out.update(latency_ms_p50=round(float(np.percentile(lat, 50)), 1),
                   latency_ms_p99=round(float(np.percentile(lat, 99)), 1),
                   beliefs=int(len(lat)))
    return out


def rate(log: DiagLog, node: str, key: str, t_from: int, t_to: int) -> float:
    """Per-second increase of a counter between the first and last report in [t_from, t_to]."""
    pts = [(t, c) for t, c in log.count(node, key) if t_from <= t <= t_to]
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return 0.0
    return (pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) / 1e9)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process used so far, from /proc."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK'), 2)


def run_transport(domain: int, width: int, height: int, rate_hz: float, reliability: str,
                  seconds: float, profile: bool = True, planner: bool = False,
                  params: dict | None = None, camera: dict | None = None) -> dict:
    """Belief (+ planner) with config/control.yaml in ``domain``, the camera for ``seconds``:
    -> delivered() figures, + 'plan_hz' with the planner, + the belief's last report
    ('belief_report') and the nodes' output ('output')."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from world_model_ctrl.paths import config_file
    from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env
    env = ros_env(domain)
    control = [config_file('control.yaml')]
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = Node('transport_probe', context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    log = DiagLog(node)
    result = None

    def spin(cond, timeout):
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)

    output = tempfile.TemporaryFile()
    group = NodeGroup(env, output=output)
    try:
        group.start(NodeSpec('world_model_ctrl.belief', params or {}, {}, control, 'belief'))
        if planner:
            group.start(NodeSpec('world_model_ctrl.planner', {}, {}, control, 'planner'))
        spin(lambda: 'belief' in log.statuses and (not planner or 'planner' in log.statuses),
             60.0)
        group.check_alive()
        cam = start_camera(env, profile, width=width, height=height, rate=rate_hz,
                           reliability=reliability, seconds=seconds, **(camera or {}))
        spin(lambda: cam.poll() is not None, seconds + 30.0)
        out, _ = cam.communicate(timeout=10)
        sent = json.loads(out.strip().splitlines()[-1])['sent_ns']
        spin(lambda: False, 2.5)                # the last reports after the last frame
        group.check_alive()
        result = delivered(log, sent)
        if planner and sent:
            # the planner's rate while the belief filtered frames (first frame + 1 s .. end)
            result['plan_hz'] = round(rate(log, 'planner', 'plans', sent[0] + 2_000_000_000,
                                           sent[-1]), 2)
        result['belief_report'] = log.statuses['belief'][-1][1]
        result['cpu_s'] = {spec.name: cpu_seconds(proc.pid) for spec, proc in group.procs}
        return result
    finally:
        group.stop_all()
        if result is not None:
            output.seek(0)
            result['output'] = output.read().decode(errors='replace')
        output.close()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


if __name__ == '__main__':
    sys.exit(camera_main())
