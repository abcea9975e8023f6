"""`wmc collect-planner`: the planner's own episodes (+ noise), ROS-free, into a bag that
`wmc train-ssm` reads with every frame, command and reward paired as the world produced them."""
import subprocess
import sys

import numpy as np
import pytest

from room_sim.worlds import make_world, world_config
from world_model_ctrl.data import DataConfig, load_episodes
from world_model_ctrl.planner_data import collect_planner

ONBOARD = DataConfig(episode_topic='/room_sim/episode_start',
                     action_fields=['linear.x', 'angular.z'])


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    out = tmp_path_factory.mktemp('pd') / 'plan'
    r = collect_planner(out, episodes=2, steps=6, seed=5, noise=0.3, world='onboard',
                        progress=False)
    assert r['episodes'] == 2 and r['steps'] == 12
    return out


def test_bag_replays_exactly_in_the_world(bag):
    """Replaying the recorded commands from the sim's seeded starts gives the recorded frames
    and rewards: nothing is shifted by a step or lost."""
    eps = load_episodes(bag, ONBOARD, strict=True)
    assert [len(e.images) for e in eps] == [7, 7]
    cfg = world_config('onboard')
    sim = make_world('onboard', cfg.to_dict(), seed=5)
    lim = np.array(cfg.action_limits)
    sim.reset()                         # the start-up reset, as the room_sim node makes
    for ep in eps:
        frame = sim.reset()
        np.testing.assert_array_equal(ep.images[0], frame)
        assert ep.rewards[0] == pytest.approx(sim.reward(), abs=1e-6)
        assert np.all(ep.actions[0] == 0)
        for t in range(1, 7):
            a = ep.actions[t].astype(np.float64)
            assert np.all(np.abs(a) <= lim + 1e-6), a
            frame, reward, _ = sim.step(a)
            # float32 actions in the bag: the pose may differ in the last bits only
            assert np.mean(ep.images[t] != frame) < 0.02
            assert ep.rewards[t] == pytest.approx(reward, abs=1e-4)
    turns = np.concatenate([ep.actions[1:, 1] for ep in eps])
    assert np.std(turns) > 0.1          # the planner (+ noise) turns, not a constant command


def test_noise_changes_the_commands_and_zero_noise_is_repeatable(tmp_path):
    runs = [collect_planner(tmp_path / f'b{i}', episodes=1, steps=4, seed=2, noise=n,
                            world='onboard', progress=False) and
            load_episodes(tmp_path / f'b{i}', ONBOARD, strict=True)[0].actions
            for i, n in enumerate((0.0, 0.0, 0.5))]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[2] - runs[0]).max() > 0.05


def test_cli_refuses_an_existing_bag_and_bad_noise(bag, tmp_path):
    cmd = [sys.executable, '-m', 'world_model_ctrl.cli', 'collect-planner', '--world', 'onboard',
           '--episodes', '1', '--steps', '2', '--no-progress']
    r = subprocess.run(cmd + ['--out', str(bag)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'exists already' in r.stderr
    r = subprocess.run(cmd + ['--out', str(tmp_path / 'x'), '--noise', '-1'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and '--noise must be >= 0' in r.stderr
    assert not (tmp_path / 'x').exists()
