"""frame_validity judges frames by room_sim's rendering rules: rendered ones pass, broken fail."""
import cv2
import numpy as np
import pytest

from room_sim.world import RoomWorld, WorldConfig
from world_model_ctrl.eval_prior import CORRUPTIONS
from world_model_ctrl.validity import frame_validity, validity_fraction


def rendered(size, n, seed, random_goal=True, overlap_every=3):
    """Frames at random states; every ``overlap_every``-th has the robot partly over the goal."""
    world = RoomWorld(WorldConfig(image_size=size, random_goal=random_goal), seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        world.reset()
        if i % overlap_every == 0:
            world.reset(start=world.goal + rng.uniform(-0.15, 0.15, 2), goal=world.goal)
        out.append(world.render())
    return np.stack(out)


@pytest.mark.parametrize('size', [16, 32, 64])
def test_accepts_frames_the_simulator_renders(size):
    frames = np.concatenate([rendered(size, 60, seed=size),
                             rendered(size, 20, seed=size + 1, random_goal=False)])
    bad = [(i, frame_validity(f)[1]) for i, f in enumerate(frames) if not frame_validity(f)[0]]
    assert not bad, bad[:3]


def test_accepts_frames_resized_by_the_dataset():
    big = rendered(64, 40, seed=7, overlap_every=2)
    for size in (32, 16):
        small = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in big]
        frac, reasons = validity_fraction(small)
        assert frac == 1.0, reasons


def _world(size=32, seed=3, **kw):
    world = RoomWorld(WorldConfig(image_size=size, **kw), seed=seed)
    world.reset(start=(0.6, 1.3), goal=(1.3, 0.7))
    return world


def _draw(world, robots=(), goals=()):
    """The simulator's own painter, with any number of robots and goals."""
    img = world._static.copy()
    for g in goals:
        world._paint(img, np.asarray(g), world.cfg.goal_size, world.cfg.goal_color)
    for r in robots:
        world._paint(img, np.asarray(r), world.cfg.robot_size, world.cfg.robot_color)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('size', [32, 64])
def test_rejects_each_kind_of_broken_frame(size):
    world = _world(size)
    good = world.render()
    assert frame_validity(good) == (True, [])
    assert np.array_equal(_draw(world, [world.pos], [world.goal]), good)
    rng = np.random.default_rng(0)
    walls = good.copy()
    w = int(np.ceil(0.05 * size))
    walls[:, :w] = world.cfg.floor_color                       # left wall gone
    smear = cv2.filter2D(good, -1, np.full((1, 5), 0.2))      # horizontal motion smear
    big = RoomWorld(WorldConfig(image_size=size, robot_size=(0.3, 0.2)))
    big.reset(start=world.pos, goal=world.goal)
    cases = {
        'robot count': _draw(world, [world.pos, (1.5, 1.6)], [world.goal]),
        'goal count': _draw(world, [world.pos], [world.goal, (0.4, 0.4)]),
        'robot missing': _draw(world, [], [world.goal]),
        'goal missing': _draw(world, [world.pos], []),
        'robot area': big.render(),
        'walls': walls,
        'floor': CORRUPTIONS['noise'](good[None], rng)[0],
        'smear': smear,
        'blur': CORRUPTIONS['blur'](good[None], rng)[0],
        'colour shift': CORRUPTIONS['colour_shift'](good[None], rng)[0],
        'occlusion': CORRUPTIONS['occlusion'](good[None], rng)[0],
        'extra object': CORRUPTIONS['extra_object'](good[None], rng)[0],
        'other room': CORRUPTIONS['room'](good[None], rng)[0],
    }
    for name, img in cases.items():
        ok, reasons = frame_validity(img)
        assert not ok, name
        if name in ('robot count', 'goal count', 'robot missing', 'goal missing', 'walls',
                    'robot area'):
            assert any(r.startswith(name) for r in reasons), (name, reasons)


def test_robot_on_the_wall_and_wrong_shapes_are_named():
    world = _world(64)
    on_wall = _draw(world, [(0.05, 1.0)], [world.goal])       # centre inside the left wall
    ok, reasons = frame_validity(on_wall)
    assert not ok and any('robot' in r for r in reasons), reasons
    rotated = RoomWorld(WorldConfig(image_size=64, robot_size=(0.14, 0.2)))
    rotated.reset(start=world.pos, goal=world.goal)           # robot turned by 90 degrees
    ok, reasons = frame_validity(rotated.render())
    assert not ok and any(r.startswith('robot shape') for r in reasons), reasons


def test_bad_input_and_config_mismatch_are_reported():
    assert frame_validity(np.zeros((16, 16), np.uint8))[0] is False
    assert frame_validity(np.zeros((16, 16, 3), np.float32))[0] is False
    ok, reasons = frame_validity(_world(32).render(), WorldConfig(image_size=64))
    assert not ok and '32 px' in reasons[0]
    # a world with other colours is judged by its own config
    cfg = WorldConfig(image_size=32, floor_color=(70, 50, 30), wall_color=(80, 80, 150))
    world = RoomWorld(cfg, seed=0)
    frame = world.reset()
    assert frame_validity(frame, cfg) == (True, [])
    assert frame_validity(frame)[0] is False
