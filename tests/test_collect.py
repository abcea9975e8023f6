"""`wmc collect` end to end over real DDS: the bag it writes, `wmc bag-info`, and alignment."""
import json
import subprocess
import sys

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from room_sim.world import WorldConfig
from world_model_ctrl.data import DataConfig, bag_to_episodes

EPISODES, STEPS = 3, 25


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bag(request, tmp_path_factory):
    from conftest import unique_domain
    out = tmp_path_factory.mktemp('collect') / 'bag'
    summary = tmp_path_factory.getbasetemp() / f'collect-{request.param}.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'world_model_ctrl.cli', 'collect', '--out', str(out),
         '--episodes', str(EPISODES), '--steps', str(STEPS), '--seed', '7',
         '--storage', request.param, '--domain-id', str(unique_domain()), '--no-progress',
         '--json', str(summary)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return out, request.param, json.loads(summary.read_text())


def ground_truth_positions(path):
    """Pose log times and positions from the bag's ground-truth topic."""
    times, pos = [], []
    with AnyReader([path]) as reader:
        conns = [c for c in reader.connections if c.topic == '/room_sim/pose']
        for conn, t, raw in reader.messages(connections=conns):
            m = reader.deserialize(raw, conn.msgtype)
            times.append(t)
            pos.append((m.pose.position.x, m.pose.position.y))
    return np.array(times), np.array(pos)


def test_bag_has_all_steps_and_episode_boundaries(bag):
    path, storage, summary = bag
    assert summary['steps'] == EPISODES * STEPS and summary['storage'] == storage
    eps = bag_to_episodes(path, DataConfig())
    assert len(eps) == EPISODES
    for ep in eps:
        assert len(ep) == STEPS + 1                    # first frame + one per command
        assert np.all(ep.actions[0] == 0)              # a_{0} = 0 at an episode start
        assert np.all(np.abs(ep.actions[1:]) <= 0.5 + 1e-9)
        assert ep.images.shape == (STEPS + 1, 64, 64, 3)


def test_frames_pair_with_the_command_that_produced_them(bag):
    path = bag[0]
    cfg = WorldConfig()
    lo, hi = cfg.bounds(cfg.robot_size)
    t_pose, pos = ground_truth_positions(path)
    for ep in bag_to_episodes(path, DataConfig()):
        # The sim publishes a frame's pose just before the frame itself.
        idx = np.searchsorted(t_pose, ep.stamps, side='right') - 1
        p = pos[idx]
        expected = np.clip(p[:-1] + np.clip(ep.actions[1:], -0.5, 0.5) * cfg.dt, lo, hi)
        np.testing.assert_allclose(p[1:], expected, atol=1e-5)
        # and the reward is the one published with the frame
        goal = np.array([1.0, 1.0])
        np.testing.assert_allclose(ep.rewards, -np.linalg.norm(p - goal, axis=1) / 2,
                                   atol=1e-5)


def test_bag_info_json_describes_the_bag(bag):
    path, storage, _ = bag
    proc = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'bag-info', str(path),
                           '--json'], capture_output=True, text=True, timeout=60, check=True)
    info = json.loads(proc.stdout)
    topics = {t['name']: t for t in info['topics']}
    assert topics['/cmd_vel']['count'] == EPISODES * STEPS
    assert topics['/cmd_vel']['type'] == 'geometry_msgs/msg/Twist'
    assert topics['/camera/image_raw']['count'] >= EPISODES * (STEPS + 1)
    assert info['episodes'] == EPISODES
    assert info['storage'] == storage
    human = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'bag-info',
                            str(path)], capture_output=True, text=True, timeout=60, check=True)
    assert '/camera/image_raw' in human.stdout and '64x64' in human.stdout


def test_collect_refuses_to_overwrite(bag):
    proc = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'collect', '--out',
                           str(bag[0]), '--episodes', '1', '--steps', '1'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'exists already' in proc.stderr
