"""What a checkpoint promises a live robot, ROS-free: the frame interval it was trained on (the
belief's pace, camera.FramePacer) and the action fields and bounds (actions.py)."""
import numpy as np
import pytest

from bagfactory import SynthBag
from world_model_ctrl.actions import (action_spec, check_fields, resolve_limits, round_up,
                                      trained_spec)
from world_model_ctrl.camera import FramePacer
from world_model_ctrl.data import DataConfig, bag_to_episodes, build_cache, frame_interval

MS = 1_000_000
STEP = 100 * MS                                     # a 10 Hz model


def taken(stamps_ms, step=STEP):
    pacer = FramePacer(step)
    return [s for s in stamps_ms if pacer.take(int(s * MS))]


# --- FramePacer ----------------------------------------------------------------------------

def test_faster_camera_has_one_frame_per_model_step_taken():
    cam = np.arange(0, 3000, 1000 / 30)             # 30 Hz for 3 s
    got = np.array(taken(cam))
    assert len(got) == pytest.approx(30, abs=1)
    assert np.allclose(np.diff(got), 100, atol=1)   # every third frame, 100 ms apart


@pytest.mark.parametrize('hz', [15, 12])
def test_camera_not_a_multiple_of_the_rate_averages_the_model_step(hz):
    got = np.array(taken(np.arange(0, 6000, 1000 / hz)))    # e.g. 15 Hz camera, 10 Hz model
    gaps = np.diff(got)
    period = 1000 / hz
    assert np.allclose(gaps / period, np.round(gaps / period), atol=0.01)   # whole frames
    assert gaps.mean() == pytest.approx(100, abs=3)         # no drift: 10 per second


@pytest.mark.parametrize('hz', [10, 7, 5, 2])
def test_camera_at_or_below_the_model_rate_has_every_frame_taken(hz):
    cam = np.arange(0, 5000, 1000 / hz)
    cam = cam + np.random.default_rng(0).uniform(-3, 3, len(cam))     # jitter
    assert taken(cam) == list(cam)


def test_jittery_30hz_camera_still_gives_ten_frames_a_second():
    rng = np.random.default_rng(1)
    cam = np.sort(np.arange(0, 10000, 1000 / 30) + rng.uniform(-5, 5, 300))
    got = np.array(taken(cam))
    assert len(got) == pytest.approx(100, abs=2)
    assert np.all(np.diff(got) >= 60)               # never two frames of one step


def test_stamps_going_back_or_jumping_restart_the_schedule():
    pacer = FramePacer(STEP)
    assert pacer.take(1000 * MS)
    assert not pacer.take(1033 * MS)
    assert pacer.take(500 * MS)                     # camera restarted: back in time
    assert not pacer.take(533 * MS)
    assert pacer.take(5000 * MS)                    # a gap (camera stalled): take, restart
    assert not pacer.take(5033 * MS)
    assert pacer.take(5100 * MS)


def test_no_recorded_step_takes_every_frame():
    assert taken(np.arange(0, 1000, 1000 / 60), step=0) == list(np.arange(0, 1000, 1000 / 60))


# --- action spec -----------------------------------------------------------------------------

@pytest.mark.parametrize('x, up', [(0.4999, 0.5), (0.5, 0.5), (0.5001, 0.51), (1.234, 1.3),
                                   (0.0213, 0.022), (12.0, 12.0), (0.0, 0.0),
                                   (float(np.float32(0.1)), 0.1)])
def test_round_up_two_significant_digits(x, up):
    assert round_up(x) == pytest.approx(up)


def test_action_spec_is_the_peak_of_each_field():
    acts = np.array([[0.1, -1.2], [-0.4999, 0.3], [0.2, 0.9]])
    assert action_spec(['linear.x', 'angular.z'], acts) == {
        'fields': ['linear.x', 'angular.z'], 'bounds': [0.5, 1.2]}


SPEC = {'fields': ['linear.x', 'angular.z'], 'bounds': [0.3, 1.5]}


def test_limits_default_to_the_trained_bounds_and_a_lower_one_is_a_cap():
    assert resolve_limits(SPEC['fields'], [], SPEC, 'm.pt').tolist() == [0.3, 1.5]
    assert resolve_limits(SPEC['fields'], [0.2, 1.5], SPEC, 'm.pt').tolist() == [0.2, 1.5]


@pytest.mark.parametrize('limits, match', [
    ([0.3, 2.0], r'angular.z: 2 > 1.5'),            # above the trained bound
    ([0.5], 'has 1 values for 2'),                  # one per field
    ([0.3, -1.0], 'must be positive'),
    ([0.3, float('nan')], 'must be positive')])
def test_bad_limits_are_refused(limits, match):
    with pytest.raises(ValueError, match=match):
        resolve_limits(SPEC['fields'], limits, SPEC, 'm.pt')


def test_a_checkpoint_without_a_spec_needs_explicit_limits():
    with pytest.raises(ValueError, match='set action_limits'):
        resolve_limits(['linear.x', 'linear.y'], [], None, 'old.pt')
    assert resolve_limits(['linear.x', 'linear.y'], [0.4, 0.4], None, 'old.pt').tolist() == \
        [0.4, 0.4]


def test_other_fields_than_the_trained_ones_are_refused():
    check_fields(['linear.x', 'angular.z'], SPEC, 'm.pt')
    check_fields(['linear.x', 'linear.y'], None, 'old.pt')        # nothing to check against
    for fields in (['linear.x', 'linear.y'], ['angular.z', 'linear.x']):
        with pytest.raises(ValueError, match=r"trained on: \['linear.x', 'angular.z'\]"):
            check_fields(fields, SPEC, 'm.pt')
    with pytest.raises(ValueError, match='malformed'):
        trained_spec({'action': {'fields': ['linear.x'], 'bounds': []}})
    assert trained_spec({}) is None


# --- the frame interval of the data ---------------------------------------------------------

def _lockstep_bag(path, n=30):
    """A lockstep simulation: sim-time stamps 100 ms apart, logged 4 ms apart (the sim runs
    as fast as the planner answers)."""
    bag = SynthBag(path)
    for k in range(n):
        log_ns = 1_700_000_000 * 10**9 + k * 4 * MS
        bag.reward(log_ns - 1000, -0.1)
        bag.image(log_ns, 5 * 10**9 + k * STEP, np.zeros((8, 8, 3), np.uint8))
        bag.cmd(log_ns + 1000, 0.1, 0.0)
    return bag.write()


def test_frame_interval_is_read_from_header_stamps_not_log_time(tmp_path):
    cfg = DataConfig(image_size=8, episode_topic=None)
    report = {}
    bag_to_episodes(_lockstep_bag(tmp_path / 'b'), cfg, report=report)
    assert report['frame_interval_s'] == pytest.approx(0.1)
    cache = build_cache([tmp_path / 'b'], tmp_path / 'cache', cfg)
    assert frame_interval(cache) == pytest.approx(0.1)


def test_export_records_what_an_older_checkpoint_lacks(tmp_path):
    """`wmc export SRC DST --record-from BAGS`: weights unchanged, record added from the bags
    with the data config stored in SRC."""
    import torch

    from conftest import tiny_world_model
    from world_model_ctrl.checkpoint import load_checkpoint
    from world_model_ctrl.cli import main
    bag = _lockstep_bag(tmp_path / 'b')
    src = tmp_path / 'old.pt'
    tiny_world_model().save(src, extra={'data': DataConfig(image_size=8,
                                                           episode_topic=None).to_dict()})
    assert main(['export', str(src), str(tmp_path / 'new.pt'), '--record-from', str(bag)]) == 0
    old, new = load_checkpoint(src, 'ssm'), load_checkpoint(tmp_path / 'new.pt', 'ssm')
    assert new['extra']['frame_interval_s'] == pytest.approx(0.1)
    assert new['extra']['action'] == {'fields': ['linear.x', 'linear.y'], 'bounds': [0.1, 0.0]}
    assert all(torch.equal(old['state_dict'][k], new['state_dict'][k]) for k in old['state_dict'])


# --- delivery estimated from stamps (the belief's camera_delivery, its loss warning) --------

def test_delivery_estimate_from_the_stamps_of_the_frames_that_came():
    from world_model_ctrl.camera import delivery_estimate
    rng = np.random.default_rng(0)
    cam = (np.arange(300) * 33.3 + rng.uniform(-2, 2, 300)) * MS      # 30 Hz, jitter
    assert delivery_estimate(list(cam[:30])) > 0.95
    for share in (0.3, 0.6):
        got = cam[np.sort(rng.choice(300, int(300 * share), replace=False))]
        est = delivery_estimate(list(got[:30]))
        assert est < 0.8 and est == pytest.approx(share, abs=0.25), est
    assert np.isnan(delivery_estimate([5 * MS]))
    # a driver catching up after a stall stamps a few frames a millisecond apart: not lost
    bursty = list(cam[:30])
    for k in (5, 17, 23):
        bursty[k] = bursty[k - 1] + 1 * MS
    assert delivery_estimate(sorted(bursty)) > 0.9


def test_a_wanted_frame_that_proves_unusable_does_not_use_up_the_step():
    """Malformed frame then a good one 1 ms later, every 100 ms (zero stamps: arrival time):
    the good ones must be filtered, not skipped behind the bad ones."""
    pacer = FramePacer(STEP)
    taken_good = 0
    for k in range(20):
        t = k * STEP
        assert pacer.wants(t)                   # the malformed frame: wanted, never took()
        if pacer.wants(t + MS):                 # the good frame next to it
            pacer.took(t + MS)
            taken_good += 1
    assert taken_good == 20


@pytest.mark.parametrize('step', [STEP, 0])
def test_the_same_frame_twice_is_taken_once(step):
    """While the camera subscription is swapped (QoS auto), a frame may come on both: with a
    camera slower than the model (5 Hz) or no recorded step, it must not be filtered twice."""
    pacer = FramePacer(step)
    got = [s for s in (0, 200, 200, 400, 400, 600) if pacer.take(s * MS)]
    assert got == [0, 200, 400, 600]
