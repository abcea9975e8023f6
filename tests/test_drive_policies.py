"""Exploration policies for the onboard world's differential drive (v, w), run in the ROS-free
OnboardWorld: the camera must see the room from many places and headings (no ROS)."""
import math

import numpy as np
import pytest

from room_sim.onboard import OnboardConfig, OnboardWorld
from world_model_ctrl.policies import (DRIVE_POLICIES, DrivePolicy, Policy, TurnsPolicy,
                                       make_policy)

EPISODES, STEPS = 40, 50          # `wmc collect`'s default episode length


def red_pixels(img):
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (r - g > 60) & (r - b > 60)).sum())


def explore(name, episodes=EPISODES, steps=STEPS, seed=1):
    """Statistics of ``episodes`` x ``steps`` of policy ``name`` from random starts."""
    world = OnboardWorld(OnboardConfig(), seed=0)
    policy = make_policy(name, seed=seed, world='onboard', limits=world.cfg.action_limits,
                         dt=world.cfg.dt)
    lo, hi = world.cfg.bounds()
    stats = {'bins_per_episode': [], 'cells': set(), 'cell_headings': set(), 'goal_seen': [],
             'at_wall': [], 'actions': []}
    for _ in range(episodes):
        world.reset()
        policy.reset()
        bins = set()
        for _ in range(steps):
            a = policy.act(world.pos, world.goal, world.heading)
            frame, _, _ = world.step(a)
            b = int((world.heading + math.pi) // (math.pi / 4)) % 8       # 45 deg bins
            cell = tuple(np.minimum((world.pos - lo) / (hi - lo) * 4, 3).astype(int))
            bins.add(b)
            stats['cells'].add(cell)
            stats['cell_headings'].add((cell, b))
            stats['goal_seen'].append(red_pixels(frame) > 0)
            stats['at_wall'].append(bool(np.any(np.isclose(world.pos, lo)
                                                | np.isclose(world.pos, hi))))
            stats['actions'].append(a)
        stats['bins_per_episode'].append(len(bins))
    stats['actions'] = np.array(stats['actions'])
    return stats


@pytest.fixture(scope='module')
def mix():
    return explore('mix')


def test_mix_sees_many_headings_in_every_episode_and_the_whole_room(mix):
    bins = np.array(mix['bins_per_episode'])
    assert bins.mean() >= 5 and bins.min() >= 3, bins          # of 8 headings, per 50 steps
    assert len(mix['cells']) >= 15                              # of 4 x 4 floor cells
    assert len(mix['cell_headings']) >= 0.75 * 16 * 8           # place x heading pairs
    seen = np.mean(mix['goal_seen'])
    assert 0.3 <= seen <= 0.8, seen            # the goal often, the rest of the room too
    assert np.mean(mix['at_wall']) <= 0.1      # little time pushing against walls


def test_mix_covers_the_action_box(mix):
    a, limits = mix['actions'], np.array(OnboardConfig().action_limits)
    assert np.all(np.abs(a) <= limits + 1e-12)
    for i in range(2):
        assert a[:, i].max() >= 0.9 * limits[i] and a[:, i].min() <= -0.9 * limits[i]
    assert np.mean(a[:, 0] > 0) > 0.5                          # mostly forward, some reverse


def test_turns_sees_more_headings_than_uniform_random_actions():
    turns, rand = explore('turns', episodes=20), explore('random', episodes=20)
    assert np.mean(turns['bins_per_episode']) >= 6
    assert np.mean(turns['bins_per_episode']) >= 1.5 * np.mean(rand['bins_per_episode'])


def test_turns_backs_off_and_turns_when_it_bumps_into_a_wall():
    cfg = OnboardConfig()
    world = OnboardWorld(cfg, seed=0)
    world.reset(start=(cfg.bounds()[1][0] - 0.06, 1.0, 0.0))   # 6 cm from the east wall
    policy = TurnsPolicy(cfg.action_limits, np.random.default_rng(0), cfg.dt)
    policy.plan = [np.array([cfg.max_speed, 0.0])] * 10         # a forward run into it
    actions = []
    for _ in range(6):
        actions.append(policy.act(world.pos, world.goal, world.heading))
        world.step(actions[-1])
    assert actions[0][0] > 0 and actions[1][0] > 0     # 5 cm, then 1 cm of 5: a bump
    assert actions[2][0] < 0                                    # backs off
    assert all(a[0] == 0 and abs(a[1]) > 0 for a in actions[3:])    # and turns in place
    # without a pose it still explores (on timing alone)
    blind = TurnsPolicy(cfg.action_limits, np.random.default_rng(1), cfg.dt)
    a = np.array([blind.act(None, None) for _ in range(200)])
    assert np.all(np.abs(a) <= np.array(cfg.action_limits)) and np.any(a[:, 1] != 0)


def test_goal_policy_drives_to_the_goal_and_needs_the_pose():
    world = OnboardWorld(OnboardConfig(random_goal=True), seed=3)
    policy = make_policy('goal', seed=2, world='onboard', limits=world.cfg.action_limits)
    final = []
    for _ in range(20):
        world.reset()
        for _ in range(40):
            world.step(policy.act(world.pos, world.goal, world.heading))
        final.append(np.linalg.norm(world.pos - world.goal))
    assert np.mean(np.array(final) < 0.25) >= 0.8, final
    a = np.array([policy.act(None, None, None) for _ in range(100)])   # no pose: random
    assert a[:, 0].min() < 0 < a[:, 0].max()


@pytest.mark.parametrize('name', DRIVE_POLICIES)
def test_every_drive_policy_stays_in_its_limits_and_is_deterministic(name):
    limits = (0.3, 1.5)

    def run(seed):
        world = OnboardWorld(OnboardConfig(max_speed=0.3, max_turn_rate=1.5), seed=0)
        world.reset()
        p = make_policy(name, seed=seed, world='onboard', limits=limits)
        p.reset()
        out = []
        for _ in range(60):
            out.append(p.act(world.pos, world.goal, world.heading))
            world.step(out[-1])
        return np.array(out)
    a = run(5)
    assert isinstance(make_policy(name, world='onboard'), DrivePolicy)
    assert np.all(np.abs(a) <= np.array(limits) + 1e-12)
    np.testing.assert_array_equal(a, run(5))
    assert not np.array_equal(a, run(6))


def test_make_policy_keeps_the_overhead_default_and_refuses_unknown_names():
    assert isinstance(make_policy('mix', 0.5, 0), Policy)        # the overhead call as before
    assert make_policy('ou', world='onboard').limits.tolist() == [0.5, 3.0]
    with pytest.raises(ValueError):
        make_policy('turns', 0.5, 0)                             # not an overhead policy
    with pytest.raises(ValueError):
        make_policy('mix', world='sideways')
    with pytest.raises(ValueError):
        make_policy('mix', world='onboard', limits=(0.5, 0.0))
