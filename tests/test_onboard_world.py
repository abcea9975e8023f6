"""room_sim onboard world core: unicycle kinematics, walls, camera, oracle, determinism (no
ROS)."""
import math

import numpy as np
import pytest

from room_sim.onboard import OnboardConfig, OnboardWorld, oracle_drive, wrap_angle
from room_sim.world import WorldConfig, reward_of


def world(**cfg):
    return OnboardWorld(OnboardConfig(**cfg), seed=0)


def red_mask(img):
    """Pixels of the goal block (its sides or its lighter top): red clearly dominant."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return (r > 150) & (r - g > 60) & (r - b > 60)


def test_frame_shape_and_dtype():
    w = world(image_size=48)
    img = w.reset()
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert w.step((0.1, 0.2))[0].shape == (48, 48, 3)


def test_straight_motion_along_the_heading():
    w = world()
    w.reset(start=(1.0, 0.5, 0.0))
    w.step((0.3, 0.0))
    np.testing.assert_allclose(w.pos, [1.03, 0.5])
    assert w.heading == 0.0
    w.reset(start=(0.5, 1.0, np.pi / 2))
    w.step((0.4, 0.0))
    np.testing.assert_allclose(w.pos, [0.5, 1.04], atol=1e-12)
    w.step((-0.2, 0.0))                                 # reversing is allowed
    np.testing.assert_allclose(w.pos, [0.5, 1.02], atol=1e-12)


def test_turning_in_place_and_on_an_arc():
    w = world()
    w.reset(start=(1.0, 0.5, 0.0))
    w.step((0.0, 1.0))
    np.testing.assert_allclose(w.pos, [1.0, 0.5])
    assert w.heading == pytest.approx(0.1)
    w.reset(start=(1.0, 0.5, 0.0))
    w.step((0.5, 2.0))                                  # midpoint rule: moves at heading 0.1
    np.testing.assert_allclose(w.pos, [1.0 + 0.05 * math.cos(0.1), 0.5 + 0.05 * math.sin(0.1)])
    assert w.heading == pytest.approx(0.2)
    np.testing.assert_allclose(w.velocity, [0.5, 2.0])


def test_actions_are_clipped_and_heading_wraps():
    cfg = OnboardConfig()
    w = OnboardWorld(cfg, seed=0)
    w.reset(start=(1.0, 0.5, 3.1))
    w.step((5.0, 50.0))
    np.testing.assert_allclose(w.velocity, [cfg.max_speed, cfg.max_turn_rate])
    assert w.heading == pytest.approx(3.1 + cfg.max_turn_rate * cfg.dt - 2 * np.pi)
    assert -np.pi <= w.heading < np.pi
    mid = 3.1 + cfg.max_turn_rate * cfg.dt / 2
    np.testing.assert_allclose(w.pos, [1.0 + 0.05 * math.cos(mid), 0.5 + 0.05 * math.sin(mid)])


def test_walls_stop_the_robot_but_not_its_turn():
    cfg = OnboardConfig()
    w = OnboardWorld(cfg, seed=0)
    lo, hi = cfg.bounds()
    assert hi[0] == pytest.approx(cfg.room_size - cfg.wall - cfg.robot_radius)
    w.reset(start=(1.0, 0.7, 0.0))
    for _ in range(60):
        w.step((0.5, 0.0))
    np.testing.assert_allclose(w.pos, [hi[0], 0.7])
    assert w.heading == 0.0
    w.step((0.5, 1.0))                                  # pushing on: turns, x stays clipped
    assert w.heading == pytest.approx(0.1) and w.pos[0] == hi[0] and w.pos[1] > 0.7
    w.reset(start=(1.0, 1.0, -3 * np.pi / 4))           # into the lower-left corner
    for _ in range(60):
        w.step((0.5, 0.0))
    np.testing.assert_allclose(w.pos, lo)


def test_reward_and_success_as_in_the_overhead_world():
    cfg = OnboardConfig()
    w = OnboardWorld(cfg, seed=0)
    w.reset(start=(0.4, 1.0, 0.0))
    assert w.reward() == pytest.approx(-0.6 / cfg.room_size)
    assert w.reward() == reward_of(w.pos, w.goal, WorldConfig())
    assert not w.success()
    w.reset(start=(1.05, 1.05, 0.0))
    assert w.success()


def test_bad_action_and_config_are_rejected():
    w = world()
    w.reset()
    for bad in ((np.nan, 0.0), (1.0, 2.0, 3.0), (np.inf, 0)):
        with pytest.raises(ValueError):
            w.step(bad)
    with pytest.raises(ValueError):
        w.reset(start=(1.0,))
    for bad in ({'image_size': 4}, {'max_turn_rate': 0.0}, {'fov_deg': 180.0},
                {'robot_radius': 0.95}, {'wall_colors': ((1, 2, 3),)}):
        with pytest.raises(ValueError):
            OnboardConfig(**bad)
    with pytest.raises(ValueError):
        OnboardConfig.from_dict({'max_sped': 1.0})


def test_determinism_by_seed():
    def run(seed):
        w = OnboardWorld(OnboardConfig(noise_std=5.0, random_goal=True), seed=seed)
        frames = [w.reset()]
        for _ in range(5):
            frames.append(w.step((0.2, 1.0))[0])
        return np.stack(frames), w.pos.copy(), w.heading, w.goal.copy()
    f1, p1, h1, g1 = run(3)
    f2, p2, h2, g2 = run(3)
    f3, p3, h3, _ = run(4)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(g1, g2)
    assert h1 == h2 and h1 != h3 and not np.array_equal(p1, p3)
    w = world()                                         # reset(seed=) restarts the sequence
    a = [w.reset(seed=9), w.pos.copy(), w.heading]
    w.reset()
    b = [w.reset(seed=9), w.pos.copy(), w.heading]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_random_starts_cover_the_floor_and_all_headings():
    cfg = OnboardConfig()
    w = OnboardWorld(cfg, seed=1)
    lo, hi = cfg.bounds()
    starts = []
    for _ in range(400):
        w.reset()
        starts.append((*w.pos, w.heading))
    starts = np.array(starts)
    assert np.all(starts[:, :2] >= lo) and np.all(starts[:, :2] <= hi)
    assert np.histogram(starts[:, 2], bins=8, range=(-np.pi, np.pi))[0].min() > 20


def test_camera_sees_the_goal_when_facing_it_and_not_when_facing_away():
    w = world()
    n = w.cfg.image_size
    img = w.reset(start=(0.4, 1.0, 0.0))                # goal 0.6 m straight ahead
    mask = red_mask(img)
    assert mask.sum() > 20
    cols = np.nonzero(mask.any(axis=0))[0]
    assert cols.mean() + 0.5 == pytest.approx(n / 2, abs=0.5)     # centred
    assert mask[: n // 2].sum() == 0                    # lower than the camera: below the horizon
    assert red_mask(w.reset(start=(0.4, 1.0, np.pi))).sum() == 0   # facing away
    # a goal to the left of the heading appears in the left half, to the right in the right half
    left = red_mask(w.reset(start=(0.4, 1.0, -0.5)))
    right = red_mask(w.reset(start=(0.4, 1.0, 0.5)))
    assert np.nonzero(left.any(0))[0].max() < n / 2 <= np.nonzero(right.any(0))[0].min()
    # perspective: nearer is bigger
    near = red_mask(w.reset(start=(0.7, 1.0, 0.0))).sum()
    assert near > 2 * mask.sum()
    # on the goal (success) the camera looks down at the block's top: the frame's bottom is red
    img = w.reset(start=(1.0, 1.0, 1.0))
    assert w.success() and red_mask(img)[-8:].mean() > 0.9


def test_walls_have_distinct_colours_so_heading_is_observable():
    """From the room centre the 4 axis headings see the same geometry: only the colours tell
    them apart, and they do (goal moved off the centre so it is not under the camera)."""
    w = world(goal=(0.3, 0.3))
    frames = [w.reset(start=(1.0, 1.0, h)).astype(int)
              for h in (0.0, np.pi / 2, np.pi, -np.pi / 2)]
    n = w.cfg.image_size
    centre = [f[n // 2, n // 2] for f in frames]        # the wall straight ahead, at the horizon
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(centre[i] - centre[j]).sum() > 60, (i, j, centre[i], centre[j])
            assert np.abs(frames[i] - frames[j]).mean() > 10
    # the wall band is where perspective puts it, the same for all 4
    cfg = w.cfg
    f, depth = n / 2 / math.tan(math.radians(cfg.fov_deg) / 2), 1.0 - cfg.wall
    top = n / 2 - f * (cfg.wall_height - cfg.camera_height) / depth
    bottom = n / 2 + f * cfg.camera_height / depth
    for img in frames:
        col = img[:, n // 2]
        wall_rows = [r for r in range(n) if np.abs(col[r] - col[n // 2]).sum() < 90]
        assert min(wall_rows) == pytest.approx(top, abs=1.0)
        assert max(wall_rows) + 1 == pytest.approx(bottom, abs=1.0)


def test_walls_look_taller_when_nearer_and_small_moves_change_the_frame():
    w = world(goal=(0.3, 1.7))
    n = w.cfg.image_size

    def wall_rows(img):
        col = img[:, n // 2].astype(int)
        return sum(np.abs(col[r] - col[n // 2]).sum() < 90 for r in range(n))
    far = w.reset(start=(0.5, 1.0, 0.0))
    near = w.reset(start=(1.3, 1.0, 0.0))
    assert wall_rows(near) > 1.5 * wall_rows(far)
    a = w.reset(start=(1.0, 0.6, 0.3))
    w.step((0.1, 0.0))                                  # 1 cm
    assert np.abs(w.render().astype(int) - a.astype(int)).sum() > 0
    w.reset(start=(1.0, 0.6, 0.3))
    w.step((0.0, 0.05))                                 # 0.005 rad
    assert np.abs(w.render().astype(int) - a.astype(int)).sum() > 0


def test_oracle_reaches_the_goal_from_random_starts_within_the_turn_plus_drive_bound():
    cfg = OnboardConfig()
    for random_goal in (False, True):
        w = OnboardWorld(OnboardConfig(random_goal=random_goal), seed=1)
        used = []
        for _ in range(50):
            w.reset()
            d = w.goal - w.pos
            turn = abs(float(wrap_angle(math.atan2(d[1], d[0]) - w.heading)))
            # turning at most max_turn_rate, driving at most max_speed, never backwards
            bound = math.ceil(turn / (cfg.max_turn_rate * cfg.dt)) + \
                math.ceil(max(np.hypot(*d) - cfg.success_radius, 0) / (cfg.max_speed * cfg.dt))
            for steps in range(200):
                if w.success():
                    break
                a = oracle_drive(w.pos, w.heading, w.goal, cfg)
                assert a[0] >= 0 and abs(a[0]) <= cfg.max_speed and abs(a[1]) <= cfg.max_turn_rate
                w.step(a)
            assert w.success()
            assert steps <= bound, (steps, bound)
            used.append(steps)
        assert 8 <= np.mean(used) <= 20                 # similar to the overhead oracle's ~8


def test_oracle_turns_in_place_when_the_goal_is_behind():
    cfg = OnboardConfig()
    a = oracle_drive(np.array([0.5, 1.0]), np.pi, np.array([1.0, 1.0]), cfg)
    assert a[0] == 0.0 and abs(a[1]) == cfg.max_turn_rate
    a = oracle_drive(np.array([0.5, 1.0]), 0.0, np.array([1.0, 1.0]), cfg)
    np.testing.assert_allclose(a, [cfg.max_speed, 0.0])
    np.testing.assert_allclose(oracle_drive(np.array([0.98, 1.0]), 0.0, np.array([1.0, 1.0]),
                                            cfg), [0.2, 0.0])          # no overshoot


def test_ground_truth_and_action_metadata():
    w = world()
    w.reset(start=(0.5, 0.6, 0.25))
    gt = w.ground_truth()
    np.testing.assert_allclose(gt['pos'], [0.5, 0.6])
    assert gt['heading'] == 0.25 and gt['episode'] == 0 and gt['steps'] == 0
    w.step((0.3, 1.0))
    np.testing.assert_allclose(w.velocity, [0.3, 1.0])
    w.reset()
    np.testing.assert_array_equal(w.velocity, [0.0, 0.0])     # odometry's twist after a reset
    assert w.cfg.action_fields == ('linear.x', 'angular.z')
    assert w.cfg.action_limits == (w.cfg.max_speed, w.cfg.max_turn_rate)
