"""room_sim world core: physics, clipping, walls, reward, rendering, determinism (no ROS)."""
import numpy as np
import pytest

from room_sim.world import RoomWorld, WorldConfig, oracle_action, reward_of


def test_velocity_moves_robot_by_v_dt():
    w = RoomWorld(seed=0)
    w.reset(start=(1.0, 1.0))
    w.step((0.3, -0.2))
    np.testing.assert_allclose(w.pos, [1.0 + 0.03, 1.0 - 0.02])


def test_action_is_clipped_per_axis_to_max_speed():
    w = RoomWorld(seed=0)
    w.reset(start=(1.0, 1.0))
    w.step((5.0, -5.0))
    np.testing.assert_allclose(w.pos, [1.05, 0.95])


def test_walls_stop_the_robot_inside_the_floor():
    cfg = WorldConfig()
    w = RoomWorld(cfg, seed=0)
    w.reset(start=(1.0, 1.0))
    for _ in range(100):
        w.step((0.5, 0.5))
    lo, hi = cfg.bounds(cfg.robot_size)
    np.testing.assert_allclose(w.pos, hi)
    assert hi[0] == pytest.approx(cfg.room_size - cfg.wall - cfg.robot_size[0] / 2)
    for _ in range(100):
        w.step((-0.5, -0.5))
    np.testing.assert_allclose(w.pos, lo)


def test_reward_is_normalised_negative_distance_and_success_radius():
    cfg = WorldConfig()
    w = RoomWorld(cfg, seed=0)
    w.reset(start=(0.4, 1.0))
    assert w.reward() == pytest.approx(-0.6 / cfg.room_size)
    assert not w.success()
    w.reset(start=(1.05, 1.05))
    assert w.success()
    assert reward_of(np.array([1.0, 1.0]), np.array([1.0, 1.0]), cfg) == 0.0


def test_bad_action_is_rejected():
    w = RoomWorld(seed=0)
    w.reset()
    with pytest.raises(ValueError):
        w.step((np.nan, 0.0))
    with pytest.raises(ValueError):
        w.step((1.0, 2.0, 3.0))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        WorldConfig(image_size=4)
    with pytest.raises(ValueError):
        WorldConfig.from_dict({'room_sise': 2.0})


def _blob_centre(img, color):
    mask = np.all(img == np.array(color, dtype=np.uint8), axis=-1)
    rows, cols = np.nonzero(mask)
    return cols.mean(), rows.mean(), mask.sum()


def test_render_puts_robot_and_goal_pixels_where_they_should_be():
    cfg = WorldConfig(image_size=64)
    w = RoomWorld(cfg, seed=0)
    img = w.reset(start=(0.5, 1.5))        # upper-left quadrant
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    col, row, n_robot = _blob_centre(img, cfg.robot_color)
    # x=0.5 m -> col 16; y=1.5 m -> row (2-1.5)*32 = 16 (pixel centres at +0.5): the fully
    # covered pixels lie symmetrically about it
    assert col + 0.5 == 16 and row + 0.5 == 16
    gcol, grow, n_goal = _blob_centre(img, cfg.goal_color)
    assert gcol + 0.5 == 32 and grow + 0.5 == 32
    # Sizes: robot 0.2 x 0.14 m = 6.4 x 4.48 px about (16, 16): full columns 13..18, rows
    # 14..17; goal 0.2 x 0.2 m = 6.4 x 6.4 px about (32, 32): columns and rows 29..34. Only
    # fully covered pixels have exactly the object's colour (edges are area-blended).
    assert n_robot == 6 * 4 and n_goal == 6 * 6
    # Walls on the border, floor inside.
    assert tuple(img[0, 0]) == tuple(cfg.wall_color)
    assert tuple(img[40, 10]) == tuple(cfg.floor_color)


def test_subpixel_motion_changes_the_image():
    w = RoomWorld(seed=0)
    a = w.reset(start=(1.5, 0.5))
    w.step((0.1, 0.0))                     # 0.01 m = 0.32 px
    assert np.abs(w.render().astype(int) - a.astype(int)).sum() > 0


def test_determinism_by_seed():
    def run(seed):
        w = RoomWorld(WorldConfig(noise_std=5.0, random_goal=True), seed=seed)
        frames = [w.reset()]
        for _ in range(5):
            frames.append(w.step((0.2, 0.1))[0])
        return np.stack(frames), w.pos.copy(), w.goal.copy()
    f1, p1, g1 = run(3)
    f2, p2, g2 = run(3)
    f3, p3, _ = run(4)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(g1, g2)
    assert not np.array_equal(p1, p3)


def test_oracle_reaches_goal_from_any_start():
    cfg = WorldConfig()
    w = RoomWorld(cfg, seed=1)
    for _ in range(20):
        w.reset()
        cheb = np.abs(w.goal - w.pos).max()
        for steps in range(100):
            if w.success():
                break
            w.step(oracle_action(w.pos, w.goal, cfg))
        assert w.success()
        # Per-axis speed bound: the oracle needs at most Chebyshev distance / (vmax dt) steps.
        assert steps <= int(np.ceil(cheb / (cfg.max_speed * cfg.dt)))
