"""Camera frames as a real driver sends them reach the belief node (issue 11, item 1), over DDS.

A camera process of its own publishes room frames at 640x480 or 1280x720 bgr8, best effort or
reliable; the belief node runs with config/control.yaml as `wmc up` starts it (the shipped Fast
DDS profile in its environment). The belief's own /diagnostics counter of received frames is
compared with the frames sent. A best-effort driver runs with the profile (as docs/control.md
tells the user); a reliable one without it (a driver started by hand), which the belief's
``image_reliability: auto`` must match. Figures with latency: bench/bench_camera.py.
"""
import numpy as np
import pytest

from camerakit import run_transport
from conftest import unique_domain

SECONDS = 6.0


@pytest.mark.alone   # conftest: a delivery bound, not a bound on the other worker's load
@pytest.mark.parametrize('width, height, hz, reliability, profile, bar', [
    (640, 480, 15, 'best_effort', True, 0.95),
    (640, 480, 15, 'reliable', False, 0.95),
    (1280, 720, 30, 'best_effort', True, 0.90),
    (1280, 720, 30, 'reliable', False, 0.90),
])
def test_large_frames_reach_the_belief(width, height, hz, reliability, profile, bar):
    r = run_transport(unique_domain(), width, height, hz, reliability, SECONDS, profile=profile)
    assert r['sent'] >= 0.6 * SECONDS * hz, r        # the measured window is most of the run
    assert r['delivered'] >= bar, {k: v for k, v in r.items() if k != 'output'}
    assert r['belief_report']['camera_qos'] == reliability     # auto followed the camera
    assert float(r['belief_report']['camera_delivery']) >= 0.8  # its own estimate agrees
    assert 'receiving about' not in r['output'] and 'Traceback' not in r['output']


@pytest.mark.alone   # a rate bound on the planner
def test_fast_camera_is_filtered_once_per_model_step_and_the_planner_keeps_its_rate():
    """30 Hz 640x480 camera, 10 Hz model (the shipped checkpoint's frame interval): about one
    frame in three is filtered (the nearest to each 0.1 s of stamps), the rest counted as
    skipped, and the planner, sharing the 2 cores, is not starved (it was at 5.4 Hz when
    every frame was filtered). The >= 95 % figure is measured by bench/bench_camera.py."""
    r = run_transport(unique_domain(), 640, 480, 30, 'best_effort', 8.0, planner=True)
    rep = {k: float(v) for k, v in r['belief_report'].items()
           if k.startswith('frames') or k.endswith('_s')}
    assert rep['model_step_s'] == pytest.approx(0.1)
    assert rep['camera_interval_s'] == pytest.approx(1 / 30, rel=0.1)
    received = rep['frames_filtered'] + rep['frames_skipped']
    assert received >= 0.9 * r['sent']
    assert rep['frames_filtered'] / received == pytest.approx(1 / 3, abs=0.05)
    assert np.isfinite(r['plan_hz']) and r['plan_hz'] >= 8.0, r['plan_hz']
    # never behind the camera: frame stamp -> belief within a few frame intervals, even at
    # the tail (a queue of old frames would add one interval per frame waiting)
    assert r['latency_ms_p99'] < 250, r


def test_large_best_effort_frames_without_the_profile_are_named_in_a_warning():
    """The one case the project cannot fix from its side: a best-effort driver without the
    profile. Most frames are lost; the belief says why and what to set."""
    r = run_transport(unique_domain(), 640, 480, 15, 'best_effort', 8.0, profile=False)
    assert r['delivered'] < 0.8             # else this case is no longer the unfixable one
    # a trickle: 'receiving about N % of the frames ...'; nothing at all: 'no camera frames
    # ... has 1 publisher(s) (1 best effort) but no frame arrives ...'
    warned = [ln for ln in r['output'].splitlines() if 'FASTDDS_DEFAULT_PROFILES_FILE=' in ln]
    assert warned and 'fastdds.xml' in warned[0], r['output'][-2000:]


def test_image_reliability_parameter_overrides_auto():
    """A user may force the subscription's reliability (e.g. best_effort for a reliable
    driver, as a lossy link would need): the parameter wins over the camera's QoS."""
    r = run_transport(unique_domain(), 64, 64, 15, 'reliable', 3.0,
                      params={'image_reliability': 'best_effort'})
    assert r['belief_report']['camera_qos'] == 'best_effort'
    assert r['delivered'] >= 0.9        # small frames arrive over best effort anyway
