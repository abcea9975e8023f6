"""train-prior / eval-prior / score-prior on a tiny bag of real simulator episodes."""
import json
import time

import cv2
import numpy as np
import pytest
import torch

from room_sim.world import RoomWorld, WorldConfig
import world_model_ctrl.train_prior as train_prior
from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.diffusion import PriorModel
from world_model_ctrl.eval_prior import (CORRUPTIONS, auroc, eval_prior, evaluate_prior,
                                         frames_from_bags, frames_from_dir, held_out_frames,
                                         score_frames, spread)
from world_model_ctrl.ssm import images_to_tensor
from world_model_ctrl.train_prior import resolve_config, train
from world_model_ctrl.validity import frame_validity
from worldbag import world_bag

SMALL = {'model': {'image_size': 16}, 'data': {'image_size': 16, 'val_fraction': 0.25},
         'train': {'threads': 1}}


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    return world_bag(tmp_path_factory.mktemp('wb') / 'bag', episodes=8, steps=20, image_size=32)


def _cfg(steps, **model):
    over = {k: dict(v) for k, v in SMALL.items()}
    over['train']['steps'] = steps
    over['model'].update(model)
    return resolve_config('debug', over)


@pytest.fixture(scope='module')
def trained(bag, tmp_path_factory):
    """A debug prior trained for 150 steps at lr 6e-3 (shared by the eval and score tests): its
    bits/dim bound on held-out frames is about 4.5 (4.4 to 5.7 over training and evaluation
    seeds), well below the 8 of a uniform model; at the preset's lr 2e-3 it is still 8.3."""
    out = tmp_path_factory.mktemp('prior') / 'prior.pt'
    cfg = _cfg(150)
    cfg['train'].lr = 6e-3
    torch.manual_seed(0)
    t0 = time.monotonic()
    summary = train([bag], out, cfg, progress=False)
    return out, summary, time.monotonic() - t0


def sample_frames(valid: int, invalid: int, size: int = 16) -> np.ndarray:
    """Rendered room frames (valid) followed by noise frames (invalid), (N, S, S, 3) uint8."""
    world = RoomWorld(WorldConfig(image_size=size, random_goal=True), seed=1)
    good = [world.reset() for _ in range(valid)]
    bad = list(np.random.default_rng(1).integers(0, 256, (invalid, size, size, 3), np.uint8))
    frames = np.stack(good + bad)
    assert [frame_validity(f)[0] for f in frames] == [True] * valid + [False] * invalid
    return frames


def fake_sampler(frames: np.ndarray):
    """A PriorModel.ddim_sample that draws ``frames`` (cycled) instead of sampling."""
    def ddim_sample(self, n, steps=None, eta=0.0, generator=None):
        return images_to_tensor(frames[np.arange(n) % len(frames)])
    return ddim_sample


def recomputed_threshold(ckpt, bag) -> float:
    """The OOD threshold as documented: the 0.99 quantile of the checkpoint model's scores on
    (up to calib_frames) evenly spread held-out frames."""
    model = PriorModel.from_checkpoint(ckpt)
    extra = load_checkpoint(ckpt, 'prior')['extra']
    frames, source = held_out_frames(model, [bag])
    assert source.startswith('validation episodes')
    frames = spread(frames, extra['train']['calib_frames'])
    scores = model.ood_score(images_to_tensor(frames)).numpy()
    return float(np.quantile(scores.astype(np.float64), 0.99))


def regenerated_validity(ckpt) -> float:
    """The share of valid frames among the DDIM samples the checkpoint's weights draw with the
    training's seed (what training reports as sample_validity)."""
    model = PriorModel.from_checkpoint(ckpt)
    extra = load_checkpoint(ckpt, 'prior')['extra']
    g = torch.Generator().manual_seed(extra['train']['seed'])
    x = model.ddim_sample(extra['train']['samples'], generator=g)
    imgs = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return float(np.mean([frame_validity(f)[0] for f in imgs]))


def test_training_learns_and_writes_a_self_describing_checkpoint(bag, trained, tmp_path):
    out, summary, wall = trained
    first = train([bag], tmp_path / 'one.pt', _cfg(1), progress=False)
    # Learning, not noise: the held-out target MSE (fixed frames, t and noise) drops.
    assert summary['val_mse'] < 0.8 * first['val_mse'], (first['val_mse'], summary['val_mse'])
    assert summary['steps'] == 150 and summary['seconds'] <= wall
    # 150 steps x 8 frames in at most the training's own time
    assert summary['images_per_s'] >= 150 * 8 / summary['seconds']
    assert summary['sample_validity'] == regenerated_validity(out)
    ckpt = load_checkpoint(out, 'prior')
    extra = ckpt['extra']
    assert ckpt['config']['image_size'] == 16 and ckpt['config']['base_channels'] == 8
    assert extra['step'] == 150 and extra['data']['image_size'] == 16
    assert extra['train']['batch_size'] == 8 and extra['dataset']['val_episodes'] == 2
    # EMA weights for use, raw weights for resume: not the same tensors
    assert set(extra['raw_state_dict']) == set(ckpt['state_dict'])
    assert any(not torch.equal(extra['raw_state_dict'][k], v)
               for k, v in ckpt['state_dict'].items())
    ood = extra['ood']
    assert ood['quantile'] == 0.99 and ood['frames'] == 32
    assert ood['threshold'] == pytest.approx(recomputed_threshold(out, bag), rel=1e-4)
    model = PriorModel.from_checkpoint(out)
    assert model.ood_threshold == ood['threshold'] == summary['ood_threshold']
    assert list((out.parent / 'prior_tb').iterdir())                 # TensorBoard run


def test_resume_continues_and_refuses_another_model(bag, tmp_path):
    out = tmp_path / 'p.pt'
    train([bag], out, _cfg(4), progress=False)
    before = load_checkpoint(out, 'prior')
    summary = train([bag], out, _cfg(7), resume=True, progress=False)
    after = load_checkpoint(out, 'prior')
    assert summary['steps'] == 7 and after['extra']['step'] == 7
    assert after['extra']['optimizer']['state'][0]['step'] == 7      # Adam state carried over
    assert not torch.equal(before['state_dict']['net.inp.weight'],
                           after['state_dict']['net.inp.weight'])
    with pytest.raises(ValueError, match='another model config'):
        train([bag], out, _cfg(9, base_channels=16), resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        train([bag], tmp_path / 'none.pt', _cfg(9), resume=True, progress=False)


def test_time_limit_stops_early_but_still_evaluates_calibrates_and_saves(bag, tmp_path):
    cfg = _cfg(100000)
    cfg['train'].max_minutes = 0.002          # 0.12 s: a few steps, far fewer than 100,000
    summary = train([bag], tmp_path / 't.pt', cfg, progress=False)
    assert summary['stopped_by_time'] and 1 <= summary['steps'] < 100000
    ckpt = load_checkpoint(tmp_path / 't.pt', 'prior')
    assert ckpt['extra']['step'] == summary['steps']
    # calibrated and sampled from the weights it saved, though stopped early
    threshold = recomputed_threshold(tmp_path / 't.pt', bag)
    assert ckpt['extra']['ood']['threshold'] == summary['ood_threshold']
    assert summary['ood_threshold'] == pytest.approx(threshold, rel=1e-4)
    assert summary['sample_validity'] == regenerated_validity(tmp_path / 't.pt')
    assert not train([bag], tmp_path / 'u.pt', _cfg(3), progress=False)['stopped_by_time']


def test_throughput_counts_training_steps_only_and_validity_counts_samples(bag, tmp_path,
                                                                        monkeypatch):
    """A controlled run: every training step takes >= 50 ms, the (side) sample check >= 0.5 s,
    and the sampler draws 3 valid frames and 1 invalid one."""
    loss_forward = train_prior._Loss.forward
    check = train_prior.validity_fraction

    def slow_forward(self, images):
        time.sleep(0.05)
        return loss_forward(self, images)

    def slow_check(frames):
        time.sleep(0.5)
        return check(frames)
    monkeypatch.setattr(train_prior._Loss, 'forward', slow_forward)
    monkeypatch.setattr(train_prior, 'validity_fraction', slow_check)
    monkeypatch.setattr(PriorModel, 'ddim_sample', fake_sampler(sample_frames(3, 1)))
    summary = train([bag], tmp_path / 'p.pt', _cfg(4), progress=False)
    seen = 4 * 8
    assert summary['steps'] == 4 and summary['sample_validity'] == 0.75
    # training time is at least 4 x 50 ms, and at most the run less the 0.5 s check
    assert seen / (summary['seconds'] - 0.5) <= summary['images_per_s'] <= seen / 0.2


def pairwise_auroc(pos, neg) -> float:
    """P(pos > neg) + P(pos == neg) / 2 over all pairs, written out."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_eval_prior_writes_the_documented_keys(bag, trained, tmp_path):
    out = trained[0]
    m = eval_prior(out, [bag], samples=4, frames=12, nll_steps=6,
                   save_samples_dir=tmp_path / 'samples')
    assert m['held_out'].startswith('validation episodes') and m['frames'] == 12
    assert len(m['bits_per_dim_per_frame']) == 12
    assert set(m['bits_per_dim_terms']) == {'prior', 'diffusion', 'decoder'}
    assert m['bits_per_dim'] == pytest.approx(sum(m['bits_per_dim_terms'].values()), rel=1e-5)
    assert m['bits_per_dim'] == pytest.approx(np.mean(m['bits_per_dim_per_frame']), abs=1e-4)
    # A uniform model of 8-bit pixels scores 8 bits/dim: the trained prior is well below it, and
    # far below the same network untrained on the same frames (about 1000 bits/dim).
    model = PriorModel.from_checkpoint(out)
    frames = spread(held_out_frames(model, [bag])[0], 12)
    torch.manual_seed(0)
    untrained = evaluate_prior(PriorModel(model.config), frames, samples=0, nll_steps=6,
                               corruptions=())['bits_per_dim']
    assert m['bits_per_dim'] < 6.0 and m['bits_per_dim'] < untrained - 2, \
        (m['bits_per_dim'], untrained)
    # samples: the share the validity rules accept in the PNGs written
    assert m['samples'] == 4
    pngs = sorted(p.name for p in (tmp_path / 'samples').glob('*.png'))
    assert pngs == [f'sample_{i:03d}.png' for i in range(4)]
    saved = [cv2.cvtColor(cv2.imread(str(tmp_path / 'samples' / p)), cv2.COLOR_BGR2RGB)
             for p in pngs]
    assert saved[0].shape == (16, 16, 3)
    assert m['sample_validity'] == np.mean([frame_validity(f)[0] for f in saved])
    # OOD: each corruption's AUROC, the threshold and its false-positive rate, from the
    # checkpoint model's scores of the same frames and corruptions (seed 0, in order)
    assert set(m['ood_auroc_per_corruption']) == set(CORRUPTIONS) == {
        'noise', 'occlusion', 'colour_shift', 'blur', 'extra_object', 'room'}
    score = lambda f: model.ood_score(images_to_tensor(f)).numpy()   # noqa: E731
    clean, rng = score(frames), np.random.default_rng(0)
    for name, corrupt in CORRUPTIONS.items():
        assert m['ood_auroc_per_corruption'][name] == pytest.approx(
            pairwise_auroc(score(corrupt(frames, rng)), clean), abs=1e-9), name
    assert m['ood_auroc'] == pytest.approx(np.mean(list(m['ood_auroc_per_corruption'].values())))
    assert m['ood_auroc_per_corruption']['noise'] > 0.9     # even a 150-step prior sees noise
    assert m['ood_threshold'] == pytest.approx(np.quantile(clean.astype(np.float64), 0.99),
                                               rel=1e-4)
    assert m['ood_false_positive_rate'] == np.mean(clean > model.ood_threshold)
    json.dumps(m)                                            # plain JSON
    # unseen bags are used whole; a mix of seen and unseen is refused
    other = world_bag(tmp_path / 'other', episodes=2, steps=10, image_size=32, seed=5)
    m2 = eval_prior(out, [other], samples=0, frames=4, nll_steps=2)
    assert m2['held_out'].startswith('all episodes') and m2['sample_validity'] is None
    with pytest.raises(ValueError, match='used for training'):
        eval_prior(out, [bag, other], samples=0, frames=4, nll_steps=2)


def test_eval_prior_sample_validity_is_the_share_of_valid_samples(trained):
    model = PriorModel.from_checkpoint(trained[0])
    model.ddim_sample = fake_sampler(sample_frames(3, 1)).__get__(model)
    m = evaluate_prior(model, sample_frames(2, 0), samples=4, nll_steps=2, corruptions=())
    assert m['samples'] == 4 and m['sample_validity'] == 0.75
    assert m['sample_failures'] and set(m['sample_failures'].values()) == {1}   # one frame


def test_score_frames_from_bags_and_from_an_image_folder(bag, trained, tmp_path):
    out = trained[0]
    model = PriorModel.from_checkpoint(out)
    frames = frames_from_bags([bag], model)
    assert frames.shape[1:] == (16, 16, 3)
    s = score_frames(out, frames[:10])
    assert len(s['scores']) == 10 and s['threshold'] == model.ood_threshold
    assert s['above_threshold'] == [v > s['threshold'] for v in s['scores']]
    # 32-px PNGs are area-resized to the model's 16 px, as the dataset does
    world = RoomWorld(WorldConfig(image_size=32), seed=0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f'f{i}.png'), cv2.cvtColor(world.reset(), cv2.COLOR_RGB2BGR))
    imgs, names = frames_from_dir(tmp_path, 16)
    assert names == ['f0.png', 'f1.png', 'f2.png'] and imgs.shape == (3, 16, 16, 3)
    noisy = np.clip(imgs + np.random.default_rng(0).normal(0, 60, imgs.shape), 0, 255)
    scores = score_frames(model, np.concatenate([imgs, noisy.astype(np.uint8)]))['scores']
    assert min(scores[3:]) > max(scores[:3])


def test_auroc_against_hand_examples():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    # pairs (pos > neg): 2>1, 2=2 (1/2), 5>1, 5>2, 0: none -> (1 + 0.5 + 2 + 0) / 6
    assert auroc([2, 5, 0], [1, 2]) == pytest.approx(3.5 / 6)
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    with pytest.raises(ValueError):
        auroc([], [1])


def test_bad_config_is_rejected_clearly():
    with pytest.raises(ValueError, match='unknown'):
        resolve_config('debug', {'train': {'stepz': 3}})
    with pytest.raises(ValueError, match='unknown'):
        resolve_config('debug', {'model': {'base': 3}})
    with pytest.raises(ValueError, match='preset'):
        resolve_config('nope')
    # YAML reads 4e-4 as a string: numbers are coerced to the field's type, non-numbers refused
    cfg = resolve_config('debug', None, {'train': {'lr': '4e-4', 'steps': 3.0,
                                                    'max_minutes': 1}})
    assert cfg['train'].lr == 4e-4 and cfg['train'].steps == 3 and type(cfg['train'].steps) is int
    with pytest.raises(ValueError, match='lr must be float'):
        resolve_config('debug', None, {'train': {'lr': 'fast'}})
    with pytest.raises(ValueError, match='steps must be an integer'):
        resolve_config('debug', None, {'train': {'steps': 2.5}})
    with pytest.raises(ValueError, match='max_minutes'):
        resolve_config('debug', {'train': {'max_minutes': -1}})
    with pytest.raises(ValueError, match='image_size'):
        train(['unused'], 'x.pt', resolve_config('debug', {'model': {'image_size': 16}}))
