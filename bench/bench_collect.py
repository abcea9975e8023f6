"""Collection rate of `wmc collect` (lockstep sim + explorer + recorder over DDS) -> JSON.

    .venv/bin/python bench/bench_collect.py --json out/bench_collect.json
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info  # noqa: E402

from world_model_ctrl.collect import collect  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--episodes', type=int, default=20)
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
            runs.append(r)
            print(f"run {i}: {r['steps_per_s']:.0f} steps/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [r['steps_per_s'] for r in runs]
    out = {'benchmark': 'wmc collect steps/s (lockstep, 64x64 rgb8, 6 topics recorded)',
           'machine': info, 'episodes': a.episodes, 'steps_per_episode': a.steps,
           'storage': a.storage, 'steps_per_s_median': statistics.median(rates),
           'steps_per_s_runs': rates, 'target_steps_per_s': 300}
    text = json.dumps(out, indent=2)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
