"""Checkpoints (world_model_ctrl.checkpoint) and WorldModel.save / from_checkpoint."""
import os

import numpy as np
import pytest
from conftest import tiny_world_model
import torch

from world_model_ctrl import checkpoint as ckpt_mod
from world_model_ctrl.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from world_model_ctrl.ssm import WorldModel


tiny = tiny_world_model


def test_model_round_trip_gives_same_outputs(tmp_path):
    m = tiny(deterministic_prior=True).eval()
    path = tmp_path / 'sub' / 'ssm.pt'              # parent folder is created
    m.save(path, extra={'step': np.int64(120), 'val_elbo': np.float32(-1.5),
                        'bags': [tmp_path / 'a.mcap'], 'hist': np.arange(3)})
    loaded = WorldModel.from_checkpoint(path)
    assert not loaded.training
    assert loaded.config == m.config
    assert loaded.checkpoint_extra == {'step': 120, 'val_elbo': pytest.approx(-1.5),
                                       'bags': [str(tmp_path / 'a.mcap')], 'hist': [0, 1, 2]}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 3, 16, 16, generator=g)
    a = torch.rand(2, 4, 2, generator=g) - 0.5
    with torch.no_grad():
        p1, p2 = m.observe(x, a), loaded.observe(x, a)
        assert torch.equal(p1.mean, p2.mean) and torch.equal(p1.std, p2.std)
        z1 = m.imagine(p1.mean[:, -1], a, sample=False)
        assert torch.equal(z1, loaded.imagine(p2.mean[:, -1], a, sample=False))
        assert torch.equal(m.decode(z1), loaded.decode(z1))
        assert torch.equal(m.reward(z1), loaded.reward(z1))
    raw = load_checkpoint(path, 'ssm')
    assert raw['format_version'] == FORMAT_VERSION and raw['kind'] == 'ssm'
    assert raw['config'] == m.config.to_dict()
    # atomic write: nothing but the checkpoint is left in the folder
    assert os.listdir(path.parent) == ['ssm.pt']


def test_wrong_kind_missing_and_foreign_files(tmp_path):
    path = tmp_path / 'prior.pt'
    save_checkpoint(path, 'prior', {'steps': 10}, {'w': torch.zeros(2)}, extra=None)
    with pytest.raises(ValueError, match="holds a 'prior' checkpoint, expected 'ssm'"):
        load_checkpoint(path, 'ssm')
    with pytest.raises(ValueError, match="expected 'ssm'"):
        WorldModel.from_checkpoint(path)
    assert load_checkpoint(path, None)['extra'] == {}

    missing = tmp_path / 'nope.pt'
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        load_checkpoint(missing, 'ssm')

    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'this is not a torch file')
    with pytest.raises(ValueError, match='garbage.pt is not a readable checkpoint'):
        load_checkpoint(garbage, 'ssm')

    bare = tmp_path / 'bare.pt'
    torch.save({'w': torch.zeros(1)}, bare)           # a plain state_dict, not our format
    with pytest.raises(ValueError, match='bare.pt is not a world_model_ctrl checkpoint'):
        load_checkpoint(bare, 'ssm')


def test_unsupported_format_version(tmp_path):
    path = tmp_path / 'future.pt'
    torch.save({'format_version': FORMAT_VERSION + 1, 'kind': 'ssm', 'config': {},
                'state_dict': {}, 'extra': {}}, path)
    with pytest.raises(ValueError, match='unsupported checkpoint format_version 2'):
        load_checkpoint(path, 'ssm')


def test_state_dict_not_matching_config_names_keys_and_shapes(tmp_path):
    m = tiny()
    cfg = m.config.to_dict()
    path = tmp_path / 'bad.pt'
    save_checkpoint(path, 'ssm', {**cfg, 'latent_dim': 5}, m.state_dict())
    with pytest.raises(ValueError) as err:
        WorldModel.from_checkpoint(path)
    msg = str(err.value)
    assert 'does not match the stored SSM config' in msg and 'bad.pt' in msg
    assert 'decoder.fc.weight: checkpoint (256, 8) vs config (256, 5)' in msg

    # the gated transition has different parameter names: reported as missing / unexpected
    save_checkpoint(path, 'ssm', {**cfg, 'deterministic_prior': True}, m.state_dict())
    with pytest.raises(ValueError, match=r"missing keys \[.*'transition.cell.weight_hh'.*"
                                         r"unexpected keys \[.*'transition.net"):
        WorldModel.from_checkpoint(path)

    save_checkpoint(path, 'ssm', {**cfg, 'latnet_dim': 5}, m.state_dict())
    with pytest.raises(ValueError, match='bad SSM config.*latnet_dim'):
        WorldModel.from_checkpoint(path)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'ssm.pt'
    save_checkpoint(path, 'ssm', {'v': 1}, {'w': torch.ones(2)})

    def broken_save(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(ckpt_mod.torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, 'ssm', {'v': 2}, {'w': torch.zeros(2)})
    monkeypatch.undo()
    assert load_checkpoint(path, 'ssm')['config'] == {'v': 1}
    assert os.listdir(tmp_path) == ['ssm.pt']
    # non-plain extras are refused at save time, not discovered at load time
    with pytest.raises(TypeError, match=r"extra\['fn'\]: builtin_function_or_method is not"):
        save_checkpoint(path, 'ssm', {}, {}, extra={'fn': len})


def test_export_drops_optimizer_and_keeps_the_model(tmp_path):
    from world_model_ctrl.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint
    state = {'w': torch.arange(4.0)}
    save_checkpoint(tmp_path / 'a.pt', 'ssm', {'x': 1}, state,
                    {'step': 3, 'optimizer': {'state': {0: {'m': torch.ones(1000)}}}})
    export_checkpoint(tmp_path / 'a.pt', tmp_path / 'b.pt')
    b = load_checkpoint(tmp_path / 'b.pt', 'ssm')
    assert 'optimizer' not in b['extra'] and b['extra']['step'] == 3
    assert b['config'] == {'x': 1} and torch.equal(b['state_dict']['w'], state['w'])
    assert (tmp_path / 'b.pt').stat().st_size < (tmp_path / 'a.pt').stat().st_size
