"""train-ssm / eval-ssm on a tiny bag of real simulator episodes: learning happens, CLI works."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.data import DataConfig, load_episodes
from world_model_ctrl.ssm import WorldModel
from world_model_ctrl.train_ssm import resolve_config, train
from worldbag import world_bag

SMALL = {'model': {'image_size': 16}, 'data': {'image_size': 16, 'val_fraction': 0.25},
         'train': {'seq_len': 8, 'batch_size': 8, 'eval_every': 1000, 'val_windows': 32,
                   'threads': 1}}


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    return world_bag(tmp_path_factory.mktemp('wb') / 'bag', episodes=8, steps=20, image_size=32)


def _train(bag, out, steps, **kw):
    over = {k: dict(v) for k, v in SMALL.items()}
    over['train']['steps'] = steps
    cfg = resolve_config('debug', over)
    return train([bag], out, cfg, progress=False, **kw)


TRAINED_STEPS = 300     # enough for the debug model to beat the trivial baselines below


@pytest.fixture(scope='module')
def trained(bag, tmp_path_factory):
    """(summary, checkpoint, the test's own wall clock around train()) of a trained model."""
    out = tmp_path_factory.mktemp('trained') / 'ssm.pt'
    t0 = time.perf_counter()
    summary = _train(bag, out, steps=TRAINED_STEPS)
    return summary, out, time.perf_counter() - t0


def test_validation_elbo_improves_with_training(bag, trained, tmp_path):
    torch.manual_seed(0)
    before = _train(bag, tmp_path / 'a.pt', steps=1)
    after, _, wall = trained
    # Learning, not noise: the held-out ELBO per frame rises by hundreds of nats (16x16x3 px).
    assert after['val_elbo'] > before['val_elbo'] + 200, (before['val_elbo'], after['val_elbo'])
    assert after['val_recon_loglik'] > before['val_recon_loglik']
    # Throughput is what was done (steps x batch sequences) over the time it took, and that
    # time is measured: it fits inside the test's own clock around train().
    assert 0 < after['seconds'] <= wall
    n = TRAINED_STEPS * SMALL['train']['batch_size']
    assert after['seq_per_s'] == pytest.approx(n / after['seconds'], rel=0.01)
    assert after['frames_per_s'] == pytest.approx(
        after['seq_per_s'] * SMALL['train']['seq_len'], rel=0.01)


def test_checkpoint_is_self_describing_and_resumable(bag, tmp_path):
    out = tmp_path / 'ssm.pt'
    _train(bag, out, steps=4)
    ckpt = load_checkpoint(out, 'ssm')
    assert ckpt['config']['image_size'] == 16
    assert ckpt['extra']['step'] == 4
    assert ckpt['extra']['data']['image_size'] == 16
    assert ckpt['extra']['train']['seq_len'] == 8
    # what a live robot is checked against: the bag's frame interval (header stamps 0.1 s
    # apart) and the command fields with the largest |value| seen (the mix policy reaches 0.5)
    assert ckpt['extra']['frame_interval_s'] == pytest.approx(0.1)
    assert ckpt['extra']['action'] == {'fields': ['linear.x', 'linear.y'], 'bounds': [0.5, 0.5]}
    summary = _train(bag, out, steps=7, resume=True)
    assert summary['steps'] == 7 and load_checkpoint(out, 'ssm')['extra']['step'] == 7
    model = WorldModel.from_checkpoint(out)
    assert model.config.image_size == 16
    # A fine-tune may change what weighs the loss (here: add overshooting); the checkpoint
    # records the new weights.
    over = {k: dict(v) for k, v in SMALL.items()}
    over['model']['overshoot'] = 3
    over['train']['steps'] = 8
    train([bag], out, resolve_config('debug', over), resume=True, progress=False)
    assert load_checkpoint(out, 'ssm')['config']['overshoot'] == 3
    assert load_checkpoint(out, 'ssm')['extra']['step'] == 8
    # Resuming with another network is refused with a clear message.
    over['model']['latent_dim'] = 3
    over['train']['steps'] = 9
    with pytest.raises(ValueError, match=r'another model config.*latent_dim'):
        train([bag], out, resolve_config('debug', over), resume=True, progress=False)


def test_cli_train_then_eval_writes_the_documented_keys(bag, trained, tmp_path):
    ckpt, metrics = tmp_path / 'm.pt', tmp_path / 'eval.json'
    sets = ['--set', 'model.image_size=16', '--set', 'data.image_size=16']
    run = [sys.executable, '-m', 'world_model_ctrl.cli']
    proc = subprocess.run(run + ['train-ssm', '--bags', str(bag), '--out', str(ckpt),
                                 '--preset', 'debug', '--steps', '6', '--no-progress'] + sets,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = subprocess.run(run + ['train-ssm', '--bags', str(bag), '--out', str(ckpt),
                                  '--preset', 'debug'] + sets, capture_output=True, text=True)
    assert again.returncode == 2 and '--resume' in again.stderr
    assert load_checkpoint(ckpt, 'ssm')['extra']['step'] == 6
    # Evaluate the trained model (a 6-step one has learnt nothing to compare with baselines).
    summary, trained_ckpt, _ = trained
    proc = subprocess.run(run + ['eval-ssm', '--ckpt', str(trained_ckpt), '--bags', str(bag),
                                 '--json', str(metrics), '--device', 'cpu'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(metrics.read_text())
    for key in ('openloop_mse', 'copy_last_mse', 'openloop_reward_rmse',
                'copy_last_reward_rmse'):
        assert set(m[key]) == {'1', '5', '10', '15'}

    # The evaluated frames, read here: the checkpoint's data config, windows of context 5 +
    # horizon 15 = 20 frames every 10 frames inside each episode; pixels in [0, 1].
    episodes = load_episodes([bag], DataConfig(image_size=16))
    context, length, stride = 5, 20, 10
    wins = [(ep.images[s:s + length].astype(np.float64) / 255, ep.rewards[s:s + length])
            for ep in episodes for s in range(0, len(ep) - length + 1, stride)]
    assert len(wins) == 8              # 8 episodes of 21 frames: one window each
    assert (m['windows'], m['frames']) == (len(wins), len(wins) * length)
    frames = np.concatenate([w[0] for w in wins])
    rewards = np.concatenate([w[1] for w in wins]).astype(np.float64)

    # copy-last baseline: the last context frame as the prediction of frame context-1+h
    for h in (1, 5, 10, 15):
        expect = np.mean([((w[0][context - 1] - w[0][context - 1 + h]) ** 2).mean()
                          for w in wins])
        assert m['copy_last_mse'][str(h)] == pytest.approx(expect, rel=1e-5), h
        expect_r = np.sqrt(np.mean([(w[1][context - 1] - w[1][context - 1 + h]) ** 2
                                    for w in wins]))
        assert m['copy_last_reward_rmse'][str(h)] == pytest.approx(expect_r, rel=1e-4), h
    assert m['reward_std'] == pytest.approx(np.std(rewards, ddof=1), rel=1e-5)
    # The trained model beats trivial predictors: the mean image of these frames, and a
    # constant reward (whose RMSE is the rewards' std).
    mean_image_mse = ((frames - frames.mean(0)) ** 2).mean()
    assert m['recon_mse'] < 0.95 * mean_image_mse, (m['recon_mse'], mean_image_mse)
    assert m['reward_rmse'] < 0.75 * m['reward_std'], (m['reward_rmse'], m['reward_std'])
    # ELBO per frame: log p(x|z) + log p(r|z) - KL, per frame. KL >= 0 and a posterior sample
    # decodes no better than the (clamped) posterior mean that recon_mse/reward_rmse measure,
    # so it is at most the Gaussian log-likelihoods of those errors (obs_std 0.1, reward_std
    # 0.05, 3x16x16 pixels) ...
    cfg = WorldModel.from_checkpoint(trained_ckpt).config
    d = frames[0].size

    def loglik(mse, std, n):
        return n * (-0.5 * mse / std ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi))
    ceiling = (loglik(m['recon_mse'], cfg.obs_std, d)
               + loglik(m['reward_rmse'] ** 2, cfg.reward_std, 1))
    assert math.isfinite(m['elbo_per_frame']) and m['elbo_per_frame'] <= ceiling, \
        (m['elbo_per_frame'], ceiling)
    # ... and it estimates the same per-frame quantity as training's held-out ELBO (other
    # episodes and window length, so only roughly).
    assert m['elbo_per_frame'] == pytest.approx(summary['val_elbo'], rel=0.1)


def test_bad_config_is_rejected_clearly():
    with pytest.raises(ValueError, match='unknown'):
        resolve_config('debug', {'train': {'stepz': 3}})
    with pytest.raises(ValueError, match='preset'):
        resolve_config('nope')


def test_torchrun_data_parallel_on_cpu(bag, tmp_path):
    """Two ranks (gloo) train one model: rank 0 writes the checkpoint and the summary."""
    torchrun = Path(sys.executable).parent / 'torchrun'
    summary = tmp_path / 'sum.json'
    proc = subprocess.run(
        [str(torchrun), '--nproc_per_node', '2', '-m', 'world_model_ctrl.cli', 'train-ssm',
         '--bags', str(bag), '--out', str(tmp_path / 'ddp.pt'), '--preset', 'debug',
         '--steps', '4', '--no-progress', '--json', str(summary),
         '--set', 'model.image_size=16', '--set', 'data.image_size=16',
         '--set', 'data.val_fraction=0.25'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s['world_size'] == 2 and s['steps'] == 4
    assert load_checkpoint(tmp_path / 'ddp.pt', 'ssm')['extra']['step'] == 4
