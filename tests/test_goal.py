"""The goal head (goal.py) and the goal_image objective, ROS-free: learning on tiny data, the
objective's preference, the checkpoint round trip and `wmc train-goal`'s errors."""
import numpy as np
import pytest
import torch

from room_sim.worlds import make_world, view_at, world_config
from world_model_ctrl.data import Episode
from world_model_ctrl.goal import (GoalHead, GoalHeadConfig, GoalTrainConfig, goal_scores,
                                   one_frame_belief, read_goal_file, train_goal_head)
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.policies import make_policy
from world_model_ctrl.ssm import WorldModel


def _episodes(n=60, steps=40, seed=0):
    """Exploration episodes of the overhead room, made in memory as `wmc collect` makes them."""
    world = make_world('overhead', seed=seed)
    policy = make_policy('mix', seed=seed)
    out = []
    for _ in range(n):
        frames, acts = [world.reset()], [np.zeros(2)]
        policy.reset()
        for _ in range(steps):
            a = policy.act(world.pos, world.goal)
            frames.append(world.step(a)[0])
            acts.append(np.clip(a, -0.5, 0.5))
        k = len(frames)
        out.append(Episode(np.stack(frames), np.array(acts, np.float32),
                           np.zeros(k, np.float32), np.arange(k, dtype=np.int64)))
    return out


@pytest.fixture(scope='module')
def trained():
    """The shipped world model with a goal head fitted here on 60 short episodes."""
    torch.manual_seed(0)
    model = WorldModel.from_checkpoint(resolve_checkpoint('shipped', 'ssm.pt'))
    head, metrics = train_goal_head(model, _episodes(), GoalTrainConfig(steps=3000),
                                    progress=False)
    return model, head, metrics


def _embed_views(model, head, poses):
    with torch.no_grad():
        return head(one_frame_belief(model, np.stack([view_at('overhead', p) for p in poses])))


def test_goal_head_learns_step_distances_from_tiny_data(trained):
    """Distances between views match the true steps between them (max speed 0.5 m/s per axis,
    0.1 s: 0.05 m per step per axis) far better than an untrained head does, and recorded
    steps measure about one step or less."""
    model, head, metrics = trained
    assert metrics['step_distance_p50'] <= 1.0 and metrics['step_distance_p99'] <= 2.0
    cfg = world_config('overhead')
    lo, hi = cfg.bounds(cfg.robot_size)
    xs = np.linspace(lo[0], hi[0], 7)
    poses = np.array([[x, y] for x in xs for y in xs])
    true = np.abs(poses[:, None] - poses[None]).max(-1) / 0.05
    iu = np.triu_indices(len(poses), 1)

    def corr(h):
        e = _embed_views(model, h, poses)
        return np.corrcoef(torch.cdist(e, e).numpy()[iu], true[iu])[0, 1]
    torch.manual_seed(1)
    untrained = GoalHead(GoalHeadConfig(latent_dim=model.config.latent_dim))
    assert corr(head) > 0.6, corr(head)
    assert corr(head) > corr(untrained) + 0.3, (corr(head), corr(untrained))
    # the head shipped in models/ssm.pt (trained on 640 episodes, docs/goal_images.md)
    shipped = GoalHead.from_model(model)
    assert corr(shipped) > 0.85, corr(shipped)


def test_goal_objective_prefers_the_plan_that_ends_at_the_goal(trained):
    """Of straight 8-step plans in 8 directions (0.4 m each, inside the room), the goal
    objective ranks first the one toward the goal image's pose, for goals in four directions
    from two starts: the goal decides, not a preferred direction."""
    model, head, _ = trained
    dirs = torch.tensor([[np.cos(a), np.sin(a)] for a in np.arange(8) * np.pi / 4],
                        dtype=torch.float32) * 0.5                      # (8, 2) m/s, E first
    actions = dirs[:, None].expand(8, 8, 2).contiguous()               # (8, H=8, 2)
    cases = {(1.0, 0.7): [((1.0, 1.5), 2), ((0.3, 0.7), 4), ((1.7, 0.7), 0)],   # N, W, E
             (0.7, 1.0): [((1.5, 1.0), 0), ((0.7, 0.3), 6)]}                    # E, S
    with torch.no_grad():
        for start, goals in cases.items():
            z0 = one_frame_belief(model, view_at('overhead', start)[None])  # (1, Z)
            for goal, best in goals:
                g = _embed_views(model, head, [goal])[0]
                scores = goal_scores(model, head, g)(z0.expand(8, -1), actions)  # (8, H)
                ranked = torch.argsort(scores.sum(1), descending=True).tolist()
                assert ranked[0] == best, (start, goal, ranked)


def test_goal_head_travels_in_the_checkpoint_and_is_required(trained, tmp_path):
    from world_model_ctrl.checkpoint import export_checkpoint
    model, head, metrics = trained
    src = resolve_checkpoint('shipped', 'ssm.pt')
    out = tmp_path / 'with_goal.pt'
    export_checkpoint(src, out, add={'goal_head': head.to_extra(metrics)})
    loaded = WorldModel.from_checkpoint(out)
    again = GoalHead.from_model(loaded, out)
    z = torch.randn(5, model.config.latent_dim)
    with torch.no_grad():
        assert torch.allclose(again(z), head(z))
    bare = tmp_path / 'bare.pt'
    export_checkpoint(out, bare, drop=('goal_head',))
    with pytest.raises(ValueError, match='no goal head.*wmc train-goal'):
        GoalHead.from_model(WorldModel.from_checkpoint(bare), bare)


def test_read_goal_file(tmp_path):
    import cv2
    rgb = view_at('overhead', [0.4, 1.5])
    big = cv2.resize(rgb, (480, 480), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / 'goal.png'
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    got = read_goal_file(path, 64)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 3       # the same picture
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    for bad in (tmp_path / 'junk.png', tmp_path / 'missing.png'):
        with pytest.raises(ValueError, match='cannot read goal image file'):
            read_goal_file(bad, 64)


def test_train_goal_cli_refuses_bad_settings(tmp_path, capsys):
    from world_model_ctrl.cli import main
    with pytest.raises(SystemExit, match='GoalTrainConfig keys'):
        main(['train-goal', '--bags', str(tmp_path), '--out', str(tmp_path / 'o.pt'),
              '--set', 'no_such_key=1'])


@pytest.mark.parametrize('world_name', ['overhead', 'onboard'])
def test_waypoints_policy_covers_the_floor_more_evenly_than_mix(world_name):
    """The goal head needs the whole room: `--policy waypoints` visits every cell of a 4 x 4
    grid over the floor, its emptiest cell holding well over what mix leaves in its emptiest
    (mix favours the goal region)."""
    cfg = world_config(world_name)
    lo, hi = cfg.bounds() if world_name == 'onboard' else cfg.bounds(cfg.robot_size)

    def cells(name):
        world = make_world(world_name, seed=0)
        policy = make_policy(name, seed=3, world=world_name, limits=cfg.action_limits,
                             dt=cfg.dt)
        counts = np.zeros((4, 4))
        for _ in range(60):
            world.reset()
            policy.reset()
            for _ in range(50):
                args = (world.pos, world.goal) + ((world.heading,) if world_name == 'onboard'
                                                  else ())
                world.step(policy.act(*args))
                i, j = np.minimum((world.pos - lo) / (hi - lo) * 4, 3).astype(int)
                counts[i, j] += 1
        return counts / counts.sum()
    way, mix = cells('waypoints'), cells('mix')
    assert way.min() > 0.02                       # uniform: 1/16 = 0.0625 per cell
    assert way.min() > 1.5 * mix.min(), (way.min(), mix.min())
