"""train-ssm / eval-ssm on a tiny bag of real simulator episodes: learning happens, CLI works."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from world_model_ctrl.checkpoint import load_checkpoint
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


def test_validation_elbo_improves_with_training(bag, tmp_path):
    torch.manual_seed(0)
    before = _train(bag, tmp_path / 'a.pt', steps=1)
    after = _train(bag, tmp_path / 'b.pt', steps=150)
    # Learning, not noise: the held-out ELBO per frame rises by hundreds of nats (16x16x3 px).
    assert after['val_elbo'] > before['val_elbo'] + 200, (before['val_elbo'], after['val_elbo'])
    assert after['val_recon_loglik'] > before['val_recon_loglik']
    assert after['seq_per_s'] > 0


def test_checkpoint_is_self_describing_and_resumable(bag, tmp_path):
    out = tmp_path / 'ssm.pt'
    _train(bag, out, steps=4)
    ckpt = load_checkpoint(out, 'ssm')
    assert ckpt['config']['image_size'] == 16
    assert ckpt['extra']['step'] == 4
    assert ckpt['extra']['data']['image_size'] == 16
    assert ckpt['extra']['train']['seq_len'] == 8
    summary = _train(bag, out, steps=7, resume=True)
    assert summary['steps'] == 7 and load_checkpoint(out, 'ssm')['extra']['step'] == 7
    model = WorldModel.from_checkpoint(out)
    assert model.config.image_size == 16
    # Resuming with another model config is refused with a clear message.
    over = {k: dict(v) for k, v in SMALL.items()}
    over['model']['latent_dim'] = 3
    over['train']['steps'] = 9
    with pytest.raises(ValueError, match='another model config'):
        train([bag], out, resolve_config('debug', over), resume=True, progress=False)


def test_cli_train_then_eval_writes_the_documented_keys(bag, tmp_path):
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
    proc = subprocess.run(run + ['eval-ssm', '--ckpt', str(ckpt), '--bags', str(bag),
                                 '--json', str(metrics), '--device', 'cpu'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(metrics.read_text())
    for key in ('elbo_per_frame', 'recon_mse', 'reward_rmse', 'reward_std'):
        assert isinstance(m[key], float)
    for key in ('openloop_mse', 'copy_last_mse'):
        assert set(m[key]) == {'1', '5', '10', '15'}
    assert 0 < m['copy_last_mse']['1'] < m['copy_last_mse']['10']


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
