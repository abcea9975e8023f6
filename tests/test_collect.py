"""`wmc collect` end to end over real DDS: the bag it writes, `wmc bag-info`, and alignment."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from room_sim.world import WorldConfig
from world_model_ctrl.data import DataConfig, bag_summary, bag_to_episodes

EPISODES, STEPS = 3, 25
DT_NS = round(WorldConfig().dt * 1e9)          # lockstep sim time advances dt per step


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bag(request, tmp_path_factory):
    from conftest import unique_domain
    out = tmp_path_factory.mktemp('collect') / 'bag'
    summary = tmp_path_factory.getbasetemp() / f'collect-{request.param}.json'
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'world_model_ctrl.cli', 'collect', '--out', str(out),
         '--episodes', str(EPISODES), '--steps', str(STEPS), '--seed', '7',
         '--storage', request.param, '--domain-id', str(unique_domain()), '--no-progress',
         '--json', str(summary)], capture_output=True, text=True, timeout=180)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    return out, request.param, json.loads(summary.read_text()), wall


def read_bag(path):
    """Every message of the bag, read raw with rosbags: per topic a list of (log time, message)."""
    msgs = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return msgs


def stamp_ns(s):
    return s.sec * 1_000_000_000 + s.nanosec


def ground_truth_positions(path):
    """Pose log times and positions from the bag's ground-truth topic."""
    poses = read_bag(path)['/room_sim/pose']
    return (np.array([t for t, _ in poses]),
            np.array([(m.pose.position.x, m.pose.position.y) for _, m in poses]))


def test_bag_holds_every_requested_step_and_episode(bag):
    """Counted in the bag itself (not the summary's echo of the request): one command per step,
    one frame, reward and pose per frame, one marker per episode, and the episodes' frames at
    consecutive sim-time stamps."""
    path, storage, summary, _ = bag
    msgs = read_bag(path)
    cmds = msgs['/cmd_vel']
    assert len(cmds) == EPISODES * STEPS
    # Episode markers: one per reset. The sim's start-up frame (sim time 0, before the explorer
    # runs) may carry one more, depending on when the recorder matched it.
    markers = [stamp_ns(m.stamp) for _, m in msgs['/room_sim/episode_start']]
    starts = [s for s in markers if s > 0]
    assert len(starts) == EPISODES and set(markers) - set(starts) <= {0}, markers
    # Frames: each episode is its marker's frame and one more per step, dt apart in sim time;
    # repeats of a frame (the sim re-sends an unanswered one) keep its stamp.
    images = msgs['/camera/image_raw']
    stamps = {stamp_ns(m.header.stamp) for _, m in images}
    expected = {s + k * DT_NS for s in starts for k in range(STEPS + 1)}
    assert len(expected) == EPISODES * (STEPS + 1)        # episodes do not overlap in sim time
    assert expected <= stamps and stamps - expected <= {0}, sorted(stamps - expected)
    assert all(b - a == (STEPS + 1) * DT_NS for a, b in zip(starts, starts[1:]))
    # With every frame (re-sends included) the sim publishes its reward, pose and goal first.
    # Counted from the first episode's marker on: the recorder may have matched the start-up
    # frame's topics one by one.
    t_first = min(t for t, m in msgs['/room_sim/episode_start'] if stamp_ns(m.stamp) > 0)
    frame_stamps = sorted(stamp_ns(m.header.stamp) for t, m in images if t >= t_first)
    assert set(frame_stamps) == expected
    for topic in ('/room_sim/pose', '/room_sim/goal'):
        assert sorted(stamp_ns(m.header.stamp) for t, m in msgs[topic]
                      if t >= t_first) == frame_stamps, topic
    assert sum(t >= t_first for t, _ in msgs['/reward']) == len(frame_stamps)
    # The summary reports what the bag holds
    assert summary['storage'] == storage == bag_summary(path)['storage']
    assert summary['steps'] == len(cmds) and summary['episodes'] == len(starts)

    eps = bag_to_episodes(path, DataConfig())
    assert len(eps) == EPISODES
    for ep, s in zip(eps, starts):
        assert len(ep) == STEPS + 1                    # first frame + one per command
        assert np.all(ep.actions[0] == 0)              # a_{0} = 0 at an episode start
        assert np.all(np.abs(ep.actions[1:]) <= 0.5 + 1e-9)
        assert np.any(ep.actions[1:] != 0)             # the explorer's commands, not zeros
        assert ep.images.shape == (STEPS + 1, 64, 64, 3)
    # every command of the bag is an action of some episode, in order
    sent = np.array([(m.linear.x, m.linear.y) for _, m in cmds], np.float32)
    np.testing.assert_array_equal(np.concatenate([ep.actions[1:] for ep in eps]), sent)


def test_summary_timing_is_measured(bag):
    """collect_s and steps_per_s against the test's own clock and the bag's command count."""
    path, _, summary, wall = bag
    assert summary['collect_s'] <= summary['wall_s'] <= wall
    n = EPISODES * STEPS
    # steps_per_s is rounded to 0.1 and collect_s to 1 ms (0.5 ms off moves n / collect_s by
    # n * 0.0005 / collect_s^2: 0.04 steps/s for a 1 s run)
    t = summary['collect_s']
    assert summary['steps_per_s'] == pytest.approx(n / t, abs=0.05 + n * 0.0005 / t ** 2 + 1e-9)
    # the explorer's run spans the bag's commands, first to last
    times = [t for t, _ in read_bag(path)['/cmd_vel']]
    assert summary['collect_s'] >= (times[-1] - times[0]) / 1e9


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
    path, storage, _, _ = bag
    proc = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'bag-info', str(path),
                           '--json'], capture_output=True, text=True, timeout=60, check=True)
    info = json.loads(proc.stdout)
    msgs = read_bag(path)
    topics = {t['name']: t for t in info['topics']}
    assert set(topics) == set(msgs)
    for name, entry in topics.items():             # counts and rates as read from the bag
        times = np.array([t for t, _ in msgs[name]])
        assert entry['count'] == len(times), name
        if len(times) > 1:
            rate = (len(times) - 1) / ((times.max() - times.min()) / 1e9)
            assert entry['rate_hz'] == pytest.approx(rate, rel=1e-6), name
    assert topics['/cmd_vel']['count'] == EPISODES * STEPS
    assert topics['/cmd_vel']['type'] == 'geometry_msgs/msg/Twist'
    assert info['message_count'] == sum(len(v) for v in msgs.values())
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
