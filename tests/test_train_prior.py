"""train-prior / eval-prior / score-prior on a tiny bag of real simulator episodes."""
import json

import cv2
import numpy as np
import pytest
import torch

from room_sim.world import RoomWorld, WorldConfig
from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.diffusion import PriorModel
from world_model_ctrl.eval_prior import (auroc, eval_prior, frames_from_bags, frames_from_dir,
                                         score_frames)
from world_model_ctrl.train_prior import resolve_config, train
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
    """A debug prior trained for 150 steps (shared by the eval and score tests); an x0 model
    needs about that many for its bits/dim bound to drop below 16."""
    out = tmp_path_factory.mktemp('prior') / 'prior.pt'
    torch.manual_seed(0)
    summary = train([bag], out, _cfg(150), progress=False)
    return out, summary


def test_training_learns_and_writes_a_self_describing_checkpoint(bag, trained, tmp_path):
    out, summary = trained
    first = train([bag], tmp_path / 'one.pt', _cfg(1), progress=False)
    # Learning, not noise: the held-out target MSE (fixed frames, t and noise) drops.
    assert summary['val_mse'] < 0.8 * first['val_mse'], (first['val_mse'], summary['val_mse'])
    assert summary['images_per_s'] > 0 and summary['steps'] == 150
    assert 0.0 <= summary['sample_validity'] <= 1.0
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
    assert ood['quantile'] == 0.99 and ood['frames'] == 32 and ood['threshold'] > 0
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
    assert ckpt['extra']['step'] == summary['steps'] and ckpt['extra']['ood']['threshold'] > 0
    assert 'sample_validity' in summary and summary['ood_threshold'] > 0
    assert not train([bag], tmp_path / 'u.pt', _cfg(3), progress=False)['stopped_by_time']


def test_eval_prior_writes_the_documented_keys(bag, trained, tmp_path):
    out, _ = trained
    m = eval_prior(out, [bag], samples=4, frames=12, nll_steps=6,
                   save_samples_dir=tmp_path / 'samples')
    assert m['held_out'].startswith('validation episodes') and m['frames'] == 12
    assert 0 < m['bits_per_dim'] < 16 and len(m['bits_per_dim_per_frame']) == 12
    assert set(m['bits_per_dim_terms']) == {'prior', 'diffusion', 'decoder'}
    assert m['bits_per_dim'] == pytest.approx(sum(m['bits_per_dim_terms'].values()), rel=1e-5)
    assert 0.0 <= m['sample_validity'] <= 1.0 and m['samples'] == 4
    assert set(m['ood_auroc_per_corruption']) == {'noise', 'occlusion', 'colour_shift', 'blur',
                                                  'extra_object', 'room'}
    assert m['ood_auroc'] == pytest.approx(np.mean(list(m['ood_auroc_per_corruption'].values())))
    assert m['ood_auroc_per_corruption']['noise'] > 0.9     # even a 150-step prior sees noise
    assert m['ood_threshold'] > 0 and 0 <= m['ood_false_positive_rate'] <= 1
    json.dumps(m)                                            # plain JSON
    pngs = sorted(p.name for p in (tmp_path / 'samples').glob('*.png'))
    assert pngs == [f'sample_{i:03d}.png' for i in range(4)]
    assert cv2.imread(str(tmp_path / 'samples' / pngs[0])).shape == (16, 16, 3)
    # unseen bags are used whole; a mix of seen and unseen is refused
    other = world_bag(tmp_path / 'other', episodes=2, steps=10, image_size=32, seed=5)
    m2 = eval_prior(out, [other], samples=0, frames=4, nll_steps=2)
    assert m2['held_out'].startswith('all episodes') and m2['sample_validity'] is None
    with pytest.raises(ValueError, match='used for training'):
        eval_prior(out, [bag, other], samples=0, frames=4, nll_steps=2)


def test_score_frames_from_bags_and_from_an_image_folder(bag, trained, tmp_path):
    out, _ = trained
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
