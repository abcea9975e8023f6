"""Inside `wmc up` (sim, belief, planner as `wmc up` starts them; realtime camera at 10 Hz):
plan time, camera frame -> command latency and the planner's peak memory. -> JSON.

    .venv/bin/python bench/bench_up.py --seconds 60 --json docs/bench/up_latency.json

plan_ms: the planner's own planner/plan_ms (the search, every plan). frame_to_command_ms:
from a frame's stamp (the sim stamps it with its clock when it publishes it) to this probe
receiving the command that answers it (planner/answered carries the frame's header): camera
transport, the belief's filter step, the wait for the planner's next timer tick (10 Hz, so up
to 100 ms of it is the timer by design) and the search. planner_peak_rss_mb: the planner
process's VmHWM. The first ``--skip`` seconds after the first command are left out (warm-up).
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(['pgrep', '-f', pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _vm(pid: int, key: str) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024.0        # kB -> MiB
    return float('nan')


def run(world: str, seconds: float, skip: float, domain: int, params: str | None) -> dict:
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import Float32
    env = {**os.environ, 'ROS_DOMAIN_ID': str(domain),
           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    env.pop('TORCH_COMPILE_DISABLE', None)
    cmd = [sys.executable, '-m', 'world_model_ctrl.cli', 'up', '--world', world]
    if params:
        cmd += ['--params', params]
    os.environ.update({'ROS_DOMAIN_ID': str(domain), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})
    up = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node('bench_up')
    answered, plan_ms = [], []
    node.create_subscription(TwistStamped, 'planner/answered',
                             lambda m: answered.append((time.time_ns(), m.header.stamp.sec * 10**9
                                                        + m.header.stamp.nanosec)), 100)
    node.create_subscription(Float32, 'planner/plan_ms',
                             lambda m: plan_ms.append((time.time_ns(), m.data)), 100)
    t_start = time.monotonic()
    try:
        while not answered:
            if up.poll() is not None:
                raise RuntimeError(f'wmc up exited: {up.stderr.read()[-2000:]}')
            if time.monotonic() - t_start > 300:
                raise RuntimeError('no command within 300 s')
            rclpy.spin_once(node, timeout_sec=0.1)
        ready_s = time.monotonic() - t_start
        t_from = time.time_ns() + int(skip * 1e9)
        end = time.monotonic() + skip + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        planner = [p for p in _pids('world_model_ctrl.planner') if p != os.getpid()]
        rss = {p: (_vm(p, 'VmHWM'), _vm(p, 'VmRSS')) for p in planner}
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            _, err = up.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            _, err = up.communicate()
        node.destroy_node()
        rclpy.shutdown()
    search = [line for line in err.splitlines() if 'search' in line and 'planner' in line]
    lat = np.array([(t - s) / 1e6 for t, s in answered if t >= t_from])
    ms = np.array([v for t, v in plan_ms if t >= t_from])

    def pct(x):
        return {'p50': round(float(np.percentile(x, 50)), 2),
                'p99': round(float(np.percentile(x, 99)), 2),
                'max': round(float(np.max(x)), 2), 'n': int(len(x))} if len(x) else None
    return {'world': world, 'params': params or 'config default', 'seconds': seconds,
            'start_to_first_command_s': round(ready_s, 1), 'plan_ms': pct(ms),
            'frame_to_command_ms': pct(lat),
            'planner_peak_rss_mb': round(max(v[0] for v in rss.values()), 1) if rss else None,
            'search': search[-1].split(']: ')[-1] if search else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=60.0)
    p.add_argument('--skip', type=float, default=5.0)
    p.add_argument('--worlds', default='overhead,onboard')
    p.add_argument('--params', help='control params YAML for every row (default: the world\'s)')
    p.add_argument('--domain-id', type=int, default=226)
    p.add_argument('--json')
    a = p.parse_args()
    rows = []
    for world in a.worlds.split(','):
        rows.append(run(world, a.seconds, a.skip, a.domain_id, a.params))
        print(rows[-1], flush=True)
    write_report({'benchmark': 'plan time, frame -> command latency, planner memory in wmc up',
                  'machine': machine_info(), 'results': rows}, a.json)


if __name__ == '__main__':
    main()
