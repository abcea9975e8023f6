"""Collection rate of `wmc collect` (lockstep sim + explorer + recorder over DDS) -> JSON.

    .venv/bin/python bench/bench_collect.py --json out/bench_collect.json
"""
import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, write_report  # noqa: E402

from world_model_ctrl.collect import collect  # noqa: E402


def steady_rate(bag) -> float:
    """Commands per second between the first and the last command in the bag (no start-up)."""
    from rosbags.highlevel import AnyReader
    with AnyReader([Path(bag)]) as reader:
        conns = [c for c in reader.connections if c.topic == '/cmd_vel']
        t = [ts for _, ts, _ in reader.messages(connections=conns)]
    return (len(t) - 1) / ((t[-1] - t[0]) / 1e9)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--episodes', type=int, default=60)
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--storage', default='mcap')
    ap.add_argument('--domain-id', type=int, default=77)
    ap.add_argument('--json')
    a = ap.parse_args()
    info = machine_info()
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix='bench_collect_'))
    try:
        for i in range(a.runs):
            r = collect(tmp / f'bag{i}', a.episodes, a.steps, seed=i, storage=a.storage,
                        domain_id=a.domain_id, progress=False)
            r['steady_steps_per_s'] = round(steady_rate(tmp / f'bag{i}'), 1)
            runs.append(r)
            print(f"run {i}: {r['steps_per_s']:.0f} steps/s with start-up, "
                  f"{r['steady_steps_per_s']:.0f} steady", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [r['steps_per_s'] for r in runs]
    steady = [r['steady_steps_per_s'] for r in runs]
    out = {'benchmark': 'wmc collect steps/s (lockstep, 64x64 rgb8, 6 topics recorded)',
           'machine': info, 'episodes': a.episodes, 'steps_per_episode': a.steps,
           'storage': a.storage,
           'note': 'steps_per_s: from starting the explorer process to its exit (includes its '
                   '~1-2 s start-up); steady: first to last recorded command',
           'steps_per_s_median': statistics.median(rates), 'steps_per_s_runs': rates,
           'steady_steps_per_s_median': statistics.median(steady),
           'steady_steps_per_s_runs': steady, 'target_steps_per_s': 300}
    print(write_report(out, a.json))


if __name__ == '__main__':
    main()
