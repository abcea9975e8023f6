"""How fast commands go to zero when things stop: camera stall, belief killed, monitor silent,
and Ctrl-C of the whole graph. Shipped model, default config/control.yaml, over DDS -> JSON.

    .venv/bin/python bench/bench_stop.py --trials 10 --json out/bench_stop.json

Per trial the camera (15 Hz, sensor-data QoS, real room frames) runs until the planner drives,
then the fault happens at t0; the figure is the time from t0 (the last frame sent, the kill, the
last heartbeat) to the first command after which every command is zero. Bounds under test:
``belief_timeout`` + one control period (0.6 s), ``monitor_timeout`` + one period (2.1 s).
"""
import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from machine import machine_info, write_report  # noqa: E402

from faultkit import Probe  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from world_model_ctrl.paths import config_file  # noqa: E402
from world_model_ctrl.procs import NodeSpec, ros_env  # noqa: E402


def start(spec, env, log):
    return subprocess.Popen(spec.argv(), env=env, stdout=log, stderr=subprocess.STDOUT)


def summary(xs):
    xs = sorted(xs)
    return {'n': len(xs), 'median_s': round(statistics.median(xs), 3),
            'max_s': round(xs[-1], 3), 'min_s': round(xs[0], 3),
            'all_s': [round(x, 3) for x in xs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--trials', type=int, default=10)
    ap.add_argument('--domain-id', type=int, default=88)
    ap.add_argument('--json')
    a = ap.parse_args()
    info = machine_info()
    env = ros_env(a.domain_id)
    control = [config_file('control.yaml')]
    belief = NodeSpec('world_model_ctrl.belief', {}, {}, control, 'belief')
    planner = NodeSpec('world_model_ctrl.planner', {'require_monitor': True}, {}, control,
                       'planner')
    log = tempfile.TemporaryFile()
    probe = Probe(a.domain_id)
    procs = {'belief': start(belief, env, log), 'planner': start(planner, env, log)}
    results = {'camera_stall': [], 'belief_killed': [], 'monitor_silent': [],
               'ctrl_c_final_zero_after_signal': []}
    beliefs = []
    probe.node.create_subscription(Image, 'belief', lambda m: beliefs.append(time.monotonic()),
                                   10)

    def settle():
        """Beliefs flowing (from a restarted node too) and the planner driving for 1 s: no
        measurement overlaps a node's start-up on the 2 cores."""
        t = time.monotonic()
        probe.until(lambda: beliefs and beliefs[-1] > t, 90, 'beliefs')
        probe.wait_moving(90)
        probe.spin(1.0)
    try:
        probe.heartbeat(2.0)                # the probe plays the image monitor
        probe.camera(15.0)
        for i in range(a.trials):
            settle()
            probe.camera(None)
            results['camera_stall'].append(probe.zero_after(probe.last_frame_time))
            probe.camera(15.0)
            settle()
            procs['belief'].kill()
            t0 = time.monotonic()
            results['belief_killed'].append(probe.zero_after(t0))
            procs['belief'].wait()
            procs['belief'] = start(belief, env, log)
            settle()
            probe.heartbeat(None)
            results['monitor_silent'].append(probe.zero_after(probe.last_beat_time, hold=0.5))
            probe.heartbeat(2.0)
            print(f'trial {i}: ' + ', '.join(f'{k} {v[-1]:.3f} s' for k, v in results.items()
                                             if v), file=sys.stderr)
        # Ctrl-C: SIGINT to the planner while it drives; time to its final zero
        for i in range(min(a.trials, 5)):
            settle()
            t0 = time.monotonic()
            procs['planner'].send_signal(signal.SIGINT)
            # spin meanwhile: a command's arrival time is when the probe takes it
            probe.until(lambda: procs['planner'].poll() is not None, 20, 'the planner to exit')
            assert procs['planner'].returncode == 0
            probe.spin(0.5)
            last_t, last = probe.cmds[-1]
            assert abs(last).sum() == 0, f'last command {last} after SIGINT'
            results['ctrl_c_final_zero_after_signal'].append(last_t - t0)
            procs['planner'] = start(planner, env, log)
    finally:
        probe.camera(None)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(20)
        probe.close()
    report = {'machine': info, 'config': 'config/control.yaml (rate_hz 10, belief_timeout '
              '0.5, monitor_timeout 2.0), shipped ssm.pt, camera 15 Hz',
              'bounds_s': {'camera_stall': 0.6, 'belief_killed': 0.6, 'monitor_silent': 2.1},
              **{k: summary(v) for k, v in results.items()}}
    print(write_report(report, a.json))


if __name__ == '__main__':
    main()
