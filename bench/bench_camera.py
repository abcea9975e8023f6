"""Camera transport: delivered fraction and camera -> belief latency at 64x64, 640x480 and
1280x720, and the planner's rate beside a 30 Hz 640x480 camera. Over DDS -> JSON.

    .venv/bin/python bench/bench_camera.py --seconds 10 --json docs/bench/camera.json

Each row: the belief node (config/control.yaml, shipped model, the environment `wmc up` gives
it: the shipped Fast DDS profile) and a camera process of its own (tests/camerakit.py) sending
room frames as bgr8 for ``--seconds``. delivered = the belief's own frames_received count over
the frames sent once both were matched; latency = frame stamp -> belief message received by a
probe (so it includes the filter step), p50/p99 over the filtered frames. Rows marked
``profile: false`` start the camera without the profile, as a driver started by hand would be.
The last two rows add the planner: with the model's frame interval (one frame filtered per 0.1 s)
and with it removed from the checkpoint (every frame filtered, the behaviour before); cpu_s is
each node's CPU time over the row.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from machine import machine_info, write_report  # noqa: E402

from camerakit import run_transport  # noqa: E402
from world_model_ctrl.checkpoint import export_checkpoint  # noqa: E402
from world_model_ctrl.paths import default_checkpoint  # noqa: E402

ROWS = [  # width, height, hz, reliability, camera with the profile, planner
    (64, 64, 30, 'best_effort', True, False),
    (640, 480, 15, 'best_effort', True, False),
    (640, 480, 15, 'reliable', False, False),
    (640, 480, 15, 'best_effort', False, False),       # the one unfixable case: warned
    (1280, 720, 30, 'best_effort', True, False),
    (1280, 720, 30, 'reliable', False, False),
    (640, 480, 30, 'best_effort', True, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--seconds', type=float, default=10.0)
    ap.add_argument('--domain-id', type=int, default=222)   # outside the tests' 1..200
    ap.add_argument('--json')
    ap.add_argument('--only-planner', action='store_true', help='just the two planner rows')
    a = ap.parse_args()
    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        unpaced = export_checkpoint(default_checkpoint('ssm.pt'), Path(tmp) / 'unpaced.pt',
                                    drop=('optimizer', 'raw_state_dict', 'frame_interval_s'))
        plan = [(*ROWS[-1], {}), (*ROWS[-1], {'checkpoint': str(unpaced)})]
        rows_in = plan if a.only_planner else [(*r, {}) for r in ROWS[:-1]] + plan
        for w, h, hz, rel, profile, planner, *params in rows_in:
            r = run_transport(a.domain_id, w, h, hz, rel, a.seconds, profile=profile,
                              planner=planner, params=params[0])
            rep = r.pop('belief_report')
            warned = 'FASTDDS_DEFAULT_PROFILES_FILE=' in r.pop('output')
            row = {'size': f'{w}x{h}', 'hz': hz, 'camera_qos': rel, 'profile': profile,
                   'paced': not params[0], **r, 'belief_qos': rep.get('camera_qos'),
                   'frames_filtered': int(float(rep['frames_filtered'])),
                   'frames_skipped': int(float(rep['frames_skipped'])),
                   'warned_no_profile': warned}
            rows.append(row)
            print(row, flush=True)
    write_report({'machine': info, 'seconds': a.seconds, 'rows': rows}, a.json)


if __name__ == '__main__':
    main()
