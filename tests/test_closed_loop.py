"""Closed loop over ROS with the shipped model: sim (lockstep) -> belief -> planner -> sim."""
import pytest

from room_sim.world import WorldConfig
from world_model_ctrl.closed_loop import baseline, run_closed_loop
from world_model_ctrl.paths import default_checkpoint


def test_baselines_use_the_sims_starts_and_the_oracle_is_optimal():
    cfg = WorldConfig()
    oracle = baseline('oracle', 10, seed=3, max_steps=100, cfg=cfg)
    assert oracle['success_rate'] == 1.0
    rand = baseline('random', 10, seed=3, max_steps=100, cfg=cfg)
    assert rand['success_rate'] < 0.5
    near = baseline('oracle', 2, seed=3, max_steps=100, cfg=cfg, start=(1.35, 0.8))
    # Chebyshev distance 0.35 m at 0.05 m/step, success within 0.1 m: 5 steps.
    assert near['steps'] == [5, 5]


def test_short_closed_loop_reaches_the_goal_from_a_near_start(ros_domain):
    ckpt = default_checkpoint('ssm.pt')
    s = run_closed_loop(str(ckpt), episodes=2, seed=1, max_steps=40, domain_id=ros_domain,
                        start=(1.35, 0.8), progress=False)
    assert s['success_rate'] == 1.0, s['per_episode']
    assert s['mean_steps'] <= 2 * s['oracle_mean_steps']
    # One plan per frame the planner answered (plan_ms is published once per plan, so the
    # last one of an episode may still be in flight when its final pose arrives), plus one per
    # frame the lockstep sim re-sent after a stall (its belief is re-sent and planned again:
    # seen 17 plans for 12 steps on a loaded machine)
    steps = sum(ep['steps'] for ep in s['per_episode'])
    assert steps - 1 <= s['plans'] <= 2 * steps + 4, (s['plans'], steps)
    # Plan times: ordered percentiles; a CEM over the model takes over a millisecond, and the
    # plans (half of them at least p50 each) ran within the run's wall time
    assert 1.0 < s['plan_ms_p50'] <= s['plan_ms_p99'] <= s['plan_ms_max'], s
    assert s['plans'] / 2 * s['plan_ms_p50'] / 1000 < s['wall_s'], s
    for ep in s['_episodes']:
        assert ep['distance'][-1] <= WorldConfig().success_radius < ep['distance'][0]


def test_shipped_checkpoint_is_present():
    assert default_checkpoint('ssm.pt').stat().st_size < 8e6
    with pytest.raises(FileNotFoundError):
        default_checkpoint('nope.pt')


@pytest.mark.alone   # conftest: loads every core on purpose
def test_lockstep_eval_is_reproducible_under_load_and_matches_the_ros_free_loop(ros_domain):
    """The same seed gives the same episodes over ROS, on an idle machine and with every core
    busy, and the same as `wmc eval --no-ros` (the same pieces without the transport)."""
    import multiprocessing as mp
    import os

    import numpy as np

    from world_model_ctrl.offline_loop import run_offline
    ckpt = str(default_checkpoint('ssm.pt'))
    kw = dict(episodes=3, seed=11, max_steps=30)
    calm = run_closed_loop(ckpt, domain_id=ros_domain, progress=False, **kw)
    burners = [mp.get_context('spawn').Process(target=_burn, daemon=True)
               for _ in range(2 * (os.cpu_count() or 1))]
    for b in burners:
        b.start()
    try:
        loaded = run_closed_loop(ckpt, domain_id=ros_domain, progress=False, **kw)
    finally:
        for b in burners:
            b.kill()
    offline = run_offline(ckpt, progress=False, **kw)
    assert calm['per_episode'] == loaded['per_episode']
    for a, b in zip(calm['_episodes'], loaded['_episodes']):
        np.testing.assert_array_equal(a['track'], b['track'])
    assert [(e['success'], e['steps']) for e in calm['per_episode']] == \
        [(e['success'], e['steps']) for e in offline['per_episode']]
    assert calm['success_rate'] > 0     # episodes that did something


def _burn():
    while True:
        pass


def test_realtime_eval_drives_the_oracle_through_the_same_loop(ros_domain):
    """--realtime: the oracle also drives the realtime sim over ROS (pose in, cmd_vel out);
    the ROS-free oracle from the same starts is reported beside it as lockstep_oracle_*."""
    ckpt = default_checkpoint('ssm.pt')
    start = (1.35, 0.8)
    s = run_closed_loop(str(ckpt), episodes=2, seed=1, max_steps=40, domain_id=ros_domain,
                        start=start, realtime=True, progress=False)
    lockstep = baseline('oracle', 2, seed=1, max_steps=40, cfg=WorldConfig(), start=start)
    assert s['lockstep_oracle_mean_steps'] == lockstep['mean_steps'] == 5
    assert s['lockstep_oracle_success_rate'] == 1.0
    # the realtime oracle reached the goal by driving, no faster than the lockstep one and at
    # most a couple of ticks slower (it answers each pose at once)
    assert s['oracle_success_rate'] == 1.0
    assert 5 <= s['oracle_mean_steps'] <= 7, s
    assert [e['oracle_steps'] for e in s['per_episode']] and \
        all(5 <= e['oracle_steps'] <= 7 for e in s['per_episode'])
    if s['mean_steps']:
        assert s['steps_ratio_vs_lockstep_oracle'] == \
            pytest.approx(s['mean_steps'] / s['lockstep_oracle_mean_steps'])
