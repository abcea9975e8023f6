"""Bags -> episodes: alignment, encodings, broken bags, cache and windows (no ROS needed)."""
import json
import os
import pickle
import warnings

import cv2
import numpy as np
import pytest
import torch
from bagfactory import PERIOD, SIM0, T0, SynthBag, episode_bag, frame_stamp, frame_time, \
    random_rgb, truncate

from world_model_ctrl import data
from world_model_ctrl.data import BagError, DataConfig, Episode, SequenceDataset, \
    bag_summary, bag_to_episodes, build_cache, load_episodes, split_episodes

SMALL = DataConfig(image_size=8)


def ks(ep: Episode) -> list[int]:
    """Frame numbers shown by an episode's images (frame k is filled with value k)."""
    return ep.images[:, 0, 0, 0].astype(int).tolist()


def check_pairing(ep: Episode):
    k = np.array(ks(ep))
    assert (ep.images == k[:, None, None, None]).all()
    np.testing.assert_array_equal(ep.actions[0], [0, 0])              # episode start
    np.testing.assert_array_equal(ep.actions[1:, 0], k[:-1])          # a_{t-1} = command t-1
    np.testing.assert_array_equal(ep.actions[1:, 1], 100 + k[:-1])
    np.testing.assert_array_equal(ep.rewards, -k)
    np.testing.assert_array_equal(ep.stamps, [frame_time(i) for i in k])


@pytest.fixture(scope='module')
def aligned_bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('aligned')
    kw = dict(n=20, drop=[10], duplicate=[5], markers=[15], no_reward=[3])
    return {s: episode_bag(root / s, storage=s, **kw) for s in ('mcap', 'sqlite3')}


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_alignment_pairs_each_frame_with_the_previous_command(aligned_bags, storage):
    eps = bag_to_episodes(aligned_bags[storage], SMALL)
    # 3: no reward -> dropped and split; 5: duplicate (value 200) dropped; 10: gap; 15: marker
    assert [ks(e) for e in eps] == [[0, 1, 2], list(range(4, 10)), list(range(11, 15)),
                                    list(range(15, 20))]
    for ep in eps:
        check_pairing(ep)
        assert ep.source == str(aligned_bags[storage])
        assert ep.images.dtype == np.uint8 and ep.actions.dtype == np.float32
        assert ep.rewards.dtype == np.float32 and ep.stamps.dtype == np.int64

    long_only = bag_to_episodes(aligned_bags[storage], DataConfig(image_size=8, min_length=4))
    assert [len(e) for e in long_only] == [6, 4, 5]
    # commands are logged 70 ms before the next frame: a 50 ms tolerance finds none
    stale = bag_to_episodes(aligned_bags[storage], DataConfig(image_size=8, cmd_tolerance=0.05))
    assert all((e.actions == 0).all() for e in stale)


def test_command_logged_with_the_frame_belongs_to_the_next_one(tmp_path):
    bag = SynthBag(tmp_path / 'same')
    for k in range(4):
        bag.image(frame_time(k), frame_stamp(k), np.full((8, 8, 3), k, np.uint8))
        bag.reward(frame_time(k), 0.0)
        bag.cmd(frame_time(k), float(k), 0.0)       # same log time as frame k
    (ep,) = bag_to_episodes(bag.write(), SMALL)
    np.testing.assert_array_equal(ep.actions[:, 0], [0, 0, 1, 2])


def test_gap_and_backwards_stamps_split(tmp_path):
    # stamps restart at frame 4 (a simulator restart without marker); frame 8 arrives late
    def stamp(k):
        return frame_stamp(k if k < 4 else k - 4)
    bag = episode_bag(tmp_path / 'b', n=12, drop=[8], stamp_of=stamp)
    assert [ks(e) for e in bag_to_episodes(bag, SMALL)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                            [9, 10, 11]]
    # a 1.5x median period with no drop is no split; max_gap below the period splits everywhere
    bag2 = episode_bag(tmp_path / 'c', n=6)
    assert len(bag_to_episodes(bag2, SMALL)) == 1
    assert bag_to_episodes(bag2, DataConfig(image_size=8, max_gap=0.05, min_length=1)) \
        .__len__() == 6


def test_lockstep_timing_splits_only_where_a_frame_is_lost(tmp_path):
    # A lockstep simulator: wall-clock intervals follow the planner, sim stamps stay regular.
    # Before its first episode it re-sends the initial frame every 0.75 s (same stamp).
    bag = SynthBag(tmp_path / 'lockstep')
    t = T0
    for _ in range(3):
        bag.image(t, SIM0 - PERIOD, np.full((8, 8, 3), 250, np.uint8))
        bag.reward(t - 500_000, 0.0)
        t += 750_000_000
    bag.marker(t - 1_000_000, SIM0, 1)
    steps_ms = [3, 14, 5, 6, 5]                 # median 5 ms: 14 ms is a log-time "gap"
    for k in range(20):
        if k != 12:                             # frame 12 is lost
            bag.image(t, frame_stamp(k), np.full((8, 8, 3), k, np.uint8))
            bag.reward(t - 500_000, -float(k))
        bag.cmd(t + 1_000_000, float(k), 100.0 + k)
        t += steps_ms[k % 5] * 1_000_000
    bag.write()
    eps = bag_to_episodes(tmp_path / 'lockstep', SMALL)
    assert [ks(e) for e in eps] == [list(range(12)), list(range(13, 20))]
    for ep in eps:
        k = np.array(ks(ep))
        np.testing.assert_array_equal(ep.actions[1:], np.c_[k[:-1], 100 + k[:-1]])
        np.testing.assert_array_equal(ep.rewards, -k)
    # the summary counts marker episodes of >= min_length distinct frames: not the re-sends
    assert bag_summary(tmp_path / 'lockstep', SMALL)['episodes'] == 1


def test_constant_header_stamps_fall_back_to_log_time(tmp_path):
    bag = episode_bag(tmp_path / 'nostamp', n=8, drop=[5], stamp_of=lambda k: 0)
    with pytest.warns(UserWarning, match='header stamps'):
        eps = bag_to_episodes(bag, SMALL)
    assert [ks(e) for e in eps] == [[0, 1, 2, 3, 4], [6, 7]]


def test_encodings_give_the_same_rgb(tmp_path):
    rgb = random_rgb(8, 8)
    gray = random_rgb(8, 8, seed=1)[..., 0]
    bag = SynthBag(tmp_path / 'enc')
    frames = [('rgb8', rgb, 0), ('bgr8', rgb, 0), ('rgba8', rgb, 0), ('bgra8', rgb, 0),
              ('rgb8', rgb, 5), ('mono8', gray, 0), ('mono16', gray, 0)]
    for k, (enc, img, pad) in enumerate(frames):
        bag.image(frame_time(k), frame_stamp(k), img, enc, pad=pad)
        bag.reward(frame_time(k), 0.0)
        bag.cmd(frame_time(k) - 1, 1.0, 2.0)
    (ep,) = bag_to_episodes(bag.write(), SMALL)
    assert ep.images.shape == (7, 8, 8, 3)
    for i in range(5):
        np.testing.assert_array_equal(ep.images[i], rgb, err_msg=frames[i][0])
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(ep.images[5], gray3)
    np.testing.assert_array_equal(ep.images[6], gray3)


def test_compressed_png_and_resize(tmp_path):
    rgb = random_rgb(96, 96, seed=2)
    gray = random_rgb(96, 96, seed=3)[..., 0]
    expect = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    expect_gray = cv2.resize(np.repeat(gray[..., None], 3, axis=2), (64, 64),
                             interpolation=cv2.INTER_AREA)
    for compressed in (False, True):
        bag = SynthBag(tmp_path / f'c{compressed}')
        for k, img in enumerate([rgb, gray]):
            if compressed:
                bag.compressed(frame_time(k), frame_stamp(k), img, 'png')
            else:
                bag.image(frame_time(k), frame_stamp(k), img, 'rgb8' if k == 0 else 'mono8')
            bag.reward(frame_time(k), 0.0)
        bag.cmd(frame_time(0) - 1)
        (ep,) = bag_to_episodes(bag.write(), DataConfig(image_size=64))
        assert ep.images.shape == (2, 64, 64, 3)
        np.testing.assert_array_equal(ep.images[0], expect)
        np.testing.assert_array_equal(ep.images[1], expect_gray)


def test_twist_stamped_and_custom_action_fields(tmp_path):
    bag = episode_bag(tmp_path / 'ts', n=6, stamped=True)
    cfg = DataConfig(image_size=8, action_fields=('linear.x', 'angular.z'))
    (ep,) = bag_to_episodes(bag, cfg)
    assert ep.actions.shape == (6, 2)
    np.testing.assert_array_equal(ep.actions[1:, 0], np.arange(5))
    np.testing.assert_array_equal(ep.actions[1:, 1], -np.arange(5))
    three = DataConfig(image_size=8, action_fields=['twist.linear.y', 'linear.x', 'linear.z'])
    (ep3,) = bag_to_episodes(bag, three)
    want = np.c_[100 + np.arange(5), np.arange(5), np.zeros(5)]
    np.testing.assert_array_equal(ep3.actions[1:], want)
    with pytest.raises(BagError, match='no field'):
        bag_to_episodes(bag, DataConfig(image_size=8, action_fields=('linear.w',)))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_broken_bags_raise_clear_errors_and_are_skipped(tmp_path, storage):
    good = episode_bag(tmp_path / 'good', n=6, storage=storage)
    bad = truncate(episode_bag(tmp_path / 'bad', n=6, storage=storage))
    with pytest.raises(BagError, match=str(bad)) as err:
        bag_to_episodes(bad, SMALL)
    assert isinstance(err.value, ValueError)
    with pytest.raises(BagError, match='no such bag'):
        bag_to_episodes(tmp_path / 'missing', SMALL)
    with pytest.raises(BagError, match='/camera/image_raw') as err:
        bag_to_episodes(good, DataConfig(image_topic='/front/image'))
    assert '/front/image' in str(err.value) and '/reward' in str(err.value)

    with pytest.warns(UserWarning, match='bad'):
        eps = load_episodes([good, bad], SMALL)
    assert [ks(e) for e in eps] == [list(range(6))]
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # the only bag: an error, not a warning
        with pytest.raises(BagError, match=str(bad)):
            load_episodes([bad], SMALL)
    with pytest.raises(BagError, match=str(bad)):
        load_episodes([good, bad], SMALL, strict=True)
    with pytest.warns(UserWarning), pytest.raises(BagError, match='no readable bag'):
        load_episodes([bad, tmp_path / 'missing'], SMALL)


def test_bag_without_rewards_near_frames_is_rejected(tmp_path):
    bag = SynthBag(tmp_path / 'late')
    for k in range(4):
        bag.image(frame_time(k), frame_stamp(k), np.zeros((8, 8, 3), np.uint8))
        bag.reward(frame_time(k) + PERIOD // 2, 0.0)       # 50 ms off: just outside tolerance
        bag.cmd(frame_time(k))
    bag.write()
    with pytest.raises(BagError, match='/reward'):
        bag_to_episodes(tmp_path / 'late', DataConfig(image_size=8, reward_tolerance=0.04))
    assert len(bag_to_episodes(tmp_path / 'late', DataConfig(image_size=8,
                                                             reward_tolerance=0.06))) == 1


def test_bag_missing_metadata_reads_its_storage_file(tmp_path):
    bag = episode_bag(tmp_path / 'nometa', n=5)
    (bag / 'metadata.yaml').unlink()
    (ep,) = bag_to_episodes(bag, SMALL)
    check_pairing(ep)


def test_cache_is_reused_and_memory_mapped(tmp_path, aligned_bags, monkeypatch):
    bag = aligned_bags['mcap']
    eps = load_episodes([bag], SMALL)
    cache = build_cache([bag], tmp_path / 'cache', SMALL)
    assert isinstance(cache.images, np.memmap)
    assert len(cache) == len(eps) and cache.num_frames == sum(len(e) for e in eps)
    for i, ep in enumerate(eps):
        got = cache.episode(i)
        for name in ('images', 'actions', 'rewards', 'stamps'):
            np.testing.assert_array_equal(getattr(got, name), getattr(ep, name))
        assert got.source == str(bag)
    assert DataConfig.from_dict(cache.config) == SMALL
    images_file = cache.path / 'images.npy'
    mtime = images_file.stat().st_mtime_ns

    def no_reading(*a, **k):
        raise AssertionError('cache not reused')
    monkeypatch.setattr(data, 'bag_to_episodes', no_reading)
    again = build_cache([bag], tmp_path / 'cache', SMALL)
    assert again.path == cache.path and images_file.stat().st_mtime_ns == mtime
    # a different config (or a changed bag) is a different cache
    with pytest.raises(AssertionError, match='not reused'):
        build_cache([bag], tmp_path / 'cache', DataConfig(image_size=16))
    monkeypatch.undo()
    os.utime(bag / 'metadata.yaml', ns=(mtime, mtime + 10**9))
    assert build_cache([bag], tmp_path / 'cache', SMALL).path != cache.path
    assert len(list((tmp_path / 'cache').iterdir())) == 2       # no temp dirs left behind

    mem = build_cache(eps, tmp_path / 'mem')
    assert isinstance(mem.images, np.memmap) and mem.lengths.tolist() == [3, 6, 4, 5]


def test_sequence_windows_never_cross_episodes(tmp_path, aligned_bags):
    cache = build_cache([aligned_bags['mcap']], tmp_path / 'cache', SMALL)
    eps = [cache.episode(i) for i in range(len(cache))]     # lengths 3, 6, 4, 5
    ds = SequenceDataset(cache, seq_len=4)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 0 + 3 + 1 + 2
    expected = [(e, j) for e, ep in enumerate(eps) for j in range(len(ep) - 3)]
    for i, (e, j) in enumerate(expected):
        item = ds[i]
        assert item['images'].dtype == torch.uint8 and item['images'].shape == (4, 8, 8, 3)
        np.testing.assert_array_equal(item['images'].numpy(), eps[e].images[j:j + 4])
        np.testing.assert_array_equal(item['actions'].numpy(), eps[e].actions[j:j + 4])
        np.testing.assert_array_equal(item['rewards'].numpy(), eps[e].rewards[j:j + 4])
        # only a window at a true episode start begins with a zero action
        assert (item['actions'][0] == 0).all().item() == (j == 0)
        # frames inside a window are consecutive frames of one episode
        assert (np.diff(item['images'][:, 0, 0, 0].numpy().astype(int)) == 1).all()

    assert len(SequenceDataset(cache, seq_len=2, stride=2)) == 1 + 3 + 2 + 2
    assert len(SequenceDataset(cache, seq_len=4, episodes_idx=[1, 3])) == 3 + 2
    with pytest.raises(ValueError, match='longest'):
        SequenceDataset(cache, seq_len=7)
    clone = pickle.loads(pickle.dumps(ds))          # DataLoader workers: reopen, not copy
    assert isinstance(clone.cache.images, np.memmap) and len(clone) == len(ds)
    np.testing.assert_array_equal(clone[2]['images'].numpy(), ds[2]['images'].numpy())


def test_split_is_deterministic_and_by_episode():
    items = list(range(10))
    train, val = split_episodes(items, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == items and not set(train) & set(val)
    assert split_episodes(items, 0.2, seed=0) == (train, val)
    assert any(split_episodes(items, 0.2, seed=s)[1] != val for s in range(1, 5))
    assert split_episodes(items[:2], 0.1, 0)[1].__len__() == 1     # both sides non-empty
    assert split_episodes(items[:1], 0.5, 0) == ([0], [])
    assert split_episodes(items, 0.0, 0) == (items, [])


def test_config_round_trip_rejects_unknown_keys():
    cfg = DataConfig(image_topic='/cam', action_fields=['linear.x'], cmd_tolerance=0.2)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d and DataConfig.from_dict(d) == cfg
    assert cfg.action_fields == ('linear.x',)
    with pytest.raises(ValueError, match='imag_topic'):
        DataConfig.from_dict({'imag_topic': '/x'})
    with pytest.raises(ValueError):
        DataConfig(gap_factor=0.5)


def test_bag_summary_numbers(tmp_path, aligned_bags):
    s = bag_summary(aligned_bags['mcap'])
    assert json.loads(json.dumps(s)) == s
    assert s['storage'] == 'mcap' and s['path'] == str(aligned_bags['mcap'])
    topics = {t['name']: t for t in s['topics']}
    assert {n: t['count'] for n, t in topics.items()} == {
        '/camera/image_raw': 20, '/reward': 18, '/cmd_vel': 20, '/room_sim/episode_start': 1}
    assert topics['/cmd_vel']['type'] == 'geometry_msgs/msg/Twist'
    assert topics['/cmd_vel']['rate_hz'] == pytest.approx(10.0)
    assert topics['/room_sim/episode_start']['rate_hz'] is None
    img = topics['/camera/image_raw']['image']
    assert (img['width'], img['height'], img['encoding']) == (8, 8, 'rgb8')
    assert img['sizes'] == {'8x8': 20} and img['encodings'] == {'rgb8': 20}
    assert s['message_count'] == 59
    # first message: reward 0, 2 ms before frame 0; last: command 19, 30 ms after frame 19
    assert s['duration_s'] == pytest.approx((frame_time(19) + 30e6 - frame_time(0) + 2e6) / 1e9)
    assert (s['episodes'], s['episodes_from']) == (2, 'markers')       # frames 0-14, 15-19

    s2 = bag_summary(episode_bag(tmp_path / 'gaps', n=12, drop=[4, 8], storage='sqlite3'))
    assert s2['storage'] == 'sqlite3'
    assert (s2['episodes'], s2['episodes_from']) == (3, 'gaps on /camera/image_raw')
    with pytest.raises(BagError, match='no such bag'):
        bag_summary(tmp_path / 'nothing')


def test_reward_match_before_and_nearest(tmp_path):
    # Rewards logged 2 ms *after* their frame: 'nearest' pairs them, 'before' finds none in
    # tolerance (the previous one is 98 ms old) and says so.
    bag = SynthBag(tmp_path / 'late_rewards')
    for k in range(10):
        bag.image(frame_time(k), frame_stamp(k), np.full((8, 8, 3), k, np.uint8))
        bag.reward(frame_time(k) + 2_000_000, -float(k))
        bag.cmd(frame_time(k) + 30_000_000, float(k), 0.0)
    bag.write()
    nearest = DataConfig(image_size=8, reward_match='nearest')
    eps = bag_to_episodes(tmp_path / 'late_rewards', nearest)
    np.testing.assert_array_equal(eps[0].rewards, -np.arange(10))
    with pytest.raises(BagError, match='no /reward message within'):
        bag_to_episodes(tmp_path / 'late_rewards', DataConfig(image_size=8))
    with pytest.raises(ValueError, match='reward_match'):
        DataConfig(reward_match='after')


def test_episodes_too_short_for_a_window_are_never_validation(tmp_path):
    """A lead-in of 2 frames (a recording's warm-up) and four of 10: with windows of 8 the
    validation episodes come from the long ones whatever the seed (a 2-frame validation set
    has no window and stopped training); the short one stays in training."""
    from world_model_ctrl.training import episode_split
    bag = episode_bag(tmp_path / 'bag', n=42, markers=[2, 12, 22, 32], size=16)
    for seed in range(20):
        cfg = DataConfig(image_size=16, val_fraction=0.2, seed=seed)
        cache, train, val = episode_split([bag], tmp_path / 'run', tmp_path / 'cache', cfg,
                                          0, False, min_len=8)
        assert sorted(cache.lengths.tolist()) == [2, 10, 10, 10, 10]
        short = int(np.argmin(cache.lengths))
        assert len(val) == 1 and short not in val and short in train
        assert sorted(train + val) == list(range(5))
