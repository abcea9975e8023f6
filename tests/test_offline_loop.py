"""`wmc eval --no-ros`: the lockstep loop in one process, same starts and planner as over ROS."""
import json
import subprocess
import sys

import numpy as np

from room_sim.worlds import make_world, world_config
from world_model_ctrl.closed_loop import baseline
from world_model_ctrl.offline_loop import planner_params, run_offline


def test_reaches_the_goal_from_a_near_start_and_repeats_exactly():
    a = run_offline(None, episodes=2, seed=1, max_steps=40, start=(1.35, 0.8), progress=False)
    assert a['success_rate'] == 1.0, a['per_episode']
    assert a['mean_steps'] <= 2 * a['oracle_mean_steps']
    assert a['plans'] == sum(ep['steps'] for ep in a['per_episode'])
    b = run_offline(None, episodes=2, seed=1, max_steps=40, start=(1.35, 0.8), progress=False)
    assert [ep['steps'] for ep in a['per_episode']] == [ep['steps'] for ep in b['per_episode']]


def test_random_starts_are_the_sims_and_the_oracles():
    """The episodes start where room_sim (seeded) puts them, as in `wmc eval` and baseline."""
    s = run_offline(None, episodes=3, seed=7, max_steps=3, world='onboard', progress=False)
    cfg = world_config('onboard')
    sim = make_world('onboard', cfg.to_dict(), seed=7)
    sim.reset()
    starts = []
    for _ in range(3):
        sim.reset()
        starts.append(sim.pos.tolist())
    np.testing.assert_allclose([ep['start'] for ep in s['per_episode']], starts)
    oracle = baseline('oracle', 3, 7, 3, cfg, None, 'onboard')
    assert s['oracle_success_rate'] == oracle['success_rate']
    assert s['world'] == 'onboard' and s['mode'] == 'lockstep-no-ros'


def test_planner_parameters_come_from_the_worlds_control_file():
    over, onb = planner_params(world='overhead'), planner_params(world='onboard')
    assert onb['action_fields'] == ['linear.x', 'angular.z']
    assert over['action_fields'] == ['linear.x', 'linear.y']


def test_cli_no_ros_writes_the_eval_json_and_refuses_realtime(tmp_path):
    out = tmp_path / 'e.json'
    r = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'eval', '--no-ros',
                        '--episodes', '1', '--max-steps', '2', '--seed', '3', '--json',
                        str(out), '--no-progress'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert s['episodes'] == 1 and s['plans'] >= 1 and 'random_success_rate' in s
    assert 'success' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'eval', '--no-ros',
                        '--realtime'], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and '--no-ros runs lockstep' in r.stderr
