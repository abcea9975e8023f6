"""Bad data never drives the robot: bags, checkpoints, training and the CLI (issue 10).

Each test is one fault: NaN/inf rewards and commands, malformed frames, a diverging loss, a
checkpoint with NaN weights, a YAML typo, a zero step count, an export over its own source, a
collect that fails half-way. Every one is refused or dropped with a message naming what and
where, and nothing good is lost.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from bagfactory import episode_bag
from conftest import tiny_world_model

from world_model_ctrl import cli
from world_model_ctrl.checkpoint import load_checkpoint, save_checkpoint
from world_model_ctrl.data import DataConfig, Episode, SequenceDataset, bag_summary, \
    bag_to_episodes, build_cache
from worldbag import world_bag

NAN, INF = float('nan'), float('inf')
CFG = DataConfig(image_size=8)
SETS16 = ['--set', 'model.image_size=16', '--set', 'data.image_size=16']


def ks(ep) -> list[int]:
    """Frame numbers of an episode (frame k shows value k)."""
    return ep.images[:, 0, 0, 0].astype(int).tolist()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``wmc argv`` in this process: (exit code, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, command: str, *texts: str) -> None:
    assert rc != 0
    assert 'Traceback' not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f'wmc {command}: error: ')]
    assert len(lines) == 1, err
    for text in texts:
        assert text in lines[0], (text, lines[0])


# A bag with every kind of bad value: rewards 3 (NaN) and 12 (inf); command 7 (NaN, the a_{t-1}
# of frame 8) and command 19 (1e300: inf once cast to float32, the a_{t-1} of frame 20);
# frame 15 is a truncated image.
BAD = dict(n=24, reward_at={3: NAN, 12: INF}, cmd_at={7: NAN, 19: 1e300},
           malformed={15: 'short'})
BAD_EPISODES = [[0, 1, 2], [4, 5, 6, 7], [9, 10, 11], [13, 14], [16, 17, 18, 19], [21, 22, 23]]
BAD_FRAMES = {3, 8, 12, 15, 20}


@pytest.fixture(scope='module')
def bad_bag(tmp_path_factory):
    return episode_bag(tmp_path_factory.mktemp('bad') / 'bag', **BAD)


@pytest.fixture(scope='module')
def wbag(tmp_path_factory):
    """Real room_sim frames at 16x16 for the training tests."""
    return world_bag(tmp_path_factory.mktemp('wb') / 'bag', episodes=4, steps=12, image_size=16)


# --- data ------------------------------------------------------------------------------------

def test_nonfinite_rewards_and_commands_never_enter_an_episode(bad_bag, caplog):
    report = {}
    with caplog.at_level(logging.WARNING, logger='world_model_ctrl.data'):
        eps = bag_to_episodes(bad_bag, CFG, report=report)
    assert [ks(e) for e in eps] == BAD_EPISODES
    for ep in eps:
        assert np.isfinite(ep.rewards).all() and np.isfinite(ep.actions).all()
        assert not BAD_FRAMES & set(ks(ep))
        np.testing.assert_array_equal(ep.rewards, -np.array(ks(ep)))   # no frame shifted
    assert report['topics']['/reward'] == {'nonfinite': 2}
    assert report['topics']['/cmd_vel'] == {'nonfinite': 2}
    assert report['topics']['/camera/image_raw']['malformed'] == 1
    assert report['frames_dropped'] == {'nonfinite_reward': 2, 'nonfinite_command': 2,
                                        'malformed_image': 1}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(bad_bag) in warning
    assert '/reward: 2 non-finite' in warning and '/cmd_vel: 2 non-finite' in warning
    assert '/camera/image_raw: 1 malformed' in warning and 'bytes' in warning


def test_malformed_frames_are_dropped_with_their_reason(tmp_path, caplog):
    kinds = {2: 'no_encoding', 5: 'unknown_encoding', 8: 'short', 11: 'empty', 14: '16UC1',
             17: '32FC1'}
    bag = episode_bag(tmp_path / 'bag', n=20, malformed=kinds)
    report = {}
    with caplog.at_level(logging.WARNING, logger='world_model_ctrl.data'):
        eps = bag_to_episodes(bag, CFG, report=report)      # today: no BagError for the bag
    assert [ks(e) for e in eps] == [[0, 1], [3, 4], [6, 7], [9, 10], [12, 13], [15, 16],
                                    [18, 19]]
    img = report['topics']['/camera/image_raw']
    assert img['malformed'] == 6 and sum(img['reasons'].values()) == 6
    reasons = ' | '.join(img['reasons'])
    for text in ('encoding', "'rgb9'", 'bytes', '0x0', "'16UC1'", "'32FC1'"):
        assert text in reasons, (text, reasons)
    assert report['frames_dropped']['malformed_image'] == 6
    assert '6 malformed frame(s)' in caplog.text and "'16UC1'" in caplog.text


def test_float32_overflow_of_a_command_counts_as_nonfinite(tmp_path):
    bag = episode_bag(tmp_path / 'bag', n=8, cmd_at={3: 1e300, 5: -INF})
    report = {}
    eps = bag_to_episodes(bag, CFG, report=report)
    assert [ks(e) for e in eps] == [[0, 1, 2, 3]]           # 4 and 6 dropped; 5, 7 alone
    assert report['topics']['/cmd_vel'] == {'nonfinite': 2}


def test_cache_and_windows_hold_no_bad_frame(bad_bag, tmp_path):
    cache = build_cache([bad_bag], tmp_path / 'cache', CFG)
    assert np.isfinite(cache.rewards).all() and np.isfinite(cache.actions).all()
    assert cache.num_frames == 24 - len(BAD_FRAMES)
    bad = cache.meta['bad_data'][str(bad_bag)]
    assert bad['topics']['/reward']['nonfinite'] == 2 and bad['topics']['/cmd_vel'] == {
        'nonfinite': 2}
    windows = SequenceDataset(cache, 2)
    assert len(windows) == sum(len(e) - 1 for e in BAD_EPISODES)
    for i in range(len(windows)):
        w = windows[i]
        k = w['images'][:, 0, 0, 0].tolist()
        assert k[1] == k[0] + 1 and not BAD_FRAMES & set(k)     # consecutive, never bad
        assert torch.isfinite(w['rewards']).all() and torch.isfinite(w['actions']).all()


def test_episode_refuses_nonfinite_values():
    img = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match='rewards has 1 non-finite'):
        Episode(img, np.zeros((3, 2), np.float32), np.array([0, NAN, 0], np.float32),
                np.arange(3))
    with pytest.raises(ValueError, match='actions has 2 non-finite'):
        Episode(img, np.array([[0, 0], [INF, 0], [0, -INF]], np.float32),
                np.zeros(3, np.float32), np.arange(3))


def test_bag_info_reports_nonfinite_and_malformed_counts(bad_bag, capsys):
    s = bag_summary(bad_bag)
    topics = {t['name']: t for t in s['topics']}
    assert topics['/reward']['nonfinite'] == 2
    assert topics['/cmd_vel']['nonfinite'] == 2      # 1e300 is inf as float32, as trained
    assert topics['/camera/image_raw']['malformed'] == 1
    rc, out, _ = run_cli(capsys, 'bag-info', bad_bag, '--json')
    assert rc == 0 and json.loads(out)['topics'] == s['topics']
    rc, out, _ = run_cli(capsys, 'bag-info', bad_bag)
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith('  /')}
    assert '2 NON-FINITE' in lines['/reward'] and '1 MALFORMED' in lines['/camera/image_raw']


# --- checkpoints -----------------------------------------------------------------------------

def _nan_file(path, kind_model=None, name=None, value=NAN):
    """A checkpoint written by torch.save (bypassing save_checkpoint) with one NaN tensor."""
    (kind_model or tiny_world_model()).save(path)
    ckpt = torch.load(path, weights_only=True)
    name = name or next(k for k, v in ckpt['state_dict'].items() if v.is_floating_point())
    ckpt['state_dict'][name].view(-1)[:3] = value
    torch.save(ckpt, path)
    return path, name


def test_save_refuses_nonfinite_weights_and_keeps_the_old_file(tmp_path):
    path = tmp_path / 'ckpt.pt'
    model = tiny_world_model()
    model.save(path)
    before = path.read_bytes()
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[:12] = NAN
    with pytest.raises(ValueError, match=rf"refusing to write {path}: tensor '{name}' has 12 "
                                         r'non-finite values'):
        save_checkpoint(path, 'ssm', model.config.to_dict(), state)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['ckpt.pt']
    with pytest.raises(ValueError, match='refusing to write'):     # nothing new either
        save_checkpoint(tmp_path / 'new.pt', 'ssm', {}, state)
    assert not (tmp_path / 'new.pt').exists()


def test_save_refuses_nonfinite_tensor_in_extra(tmp_path):
    opt = {'state': {0: {'exp_avg': torch.tensor([1.0, INF])}}, 'param_groups': []}
    with pytest.raises(ValueError, match=r"tensor \"extra\['optimizer'\]\['state'\]\[0\]"
                                         r"\['exp_avg'\]\" has 1 non-finite"):
        save_checkpoint(tmp_path / 'c.pt', 'ssm', {}, {'w': torch.ones(2)},
                        extra={'optimizer': opt})
    assert not (tmp_path / 'c.pt').exists()


def test_world_model_refuses_a_nan_checkpoint(tmp_path):
    from world_model_ctrl.ssm import WorldModel
    path, name = _nan_file(tmp_path / 'nan.pt')
    with pytest.raises(ValueError, match=rf"nan.pt: tensor '{name}' has 3 non-finite"):
        WorldModel.from_checkpoint(path)
    with pytest.raises(ValueError, match=name):
        load_checkpoint(path, None)


def test_prior_model_refuses_a_nan_checkpoint(tmp_path):
    from world_model_ctrl.diffusion import DiffusionConfig, PriorModel
    prior = PriorModel(DiffusionConfig.from_preset('debug', image_size=16))
    path, name = _nan_file(tmp_path / 'prior.pt', prior, value=-INF)
    with pytest.raises(ValueError, match=rf"tensor '{name}' has 3 non-finite"):
        PriorModel.from_checkpoint(path)


def test_export_refuses_a_nan_checkpoint(tmp_path, capsys):
    path, name = _nan_file(tmp_path / 'nan.pt')
    rc, _, err = run_cli(capsys, 'export', path, tmp_path / 'out.pt')
    assert_one_line_error(rc, err, 'export', f"{path}: tensor '{name}'", 'non-finite',
                          'refusing to load')
    assert not (tmp_path / 'out.pt').exists()


def test_eval_ssm_refuses_a_nan_checkpoint(tmp_path, bad_bag, capsys):
    path, name = _nan_file(tmp_path / 'nan.pt')
    rc, _, err = run_cli(capsys, 'eval-ssm', '--ckpt', path, '--bags', bad_bag, '--device',
                         'cpu', '--no-progress', '--json', tmp_path / 'e.json')
    assert_one_line_error(rc, err, 'eval-ssm', f"tensor '{name}'", 'non-finite')
    assert not (tmp_path / 'e.json').exists()


def test_train_resume_refuses_a_nan_checkpoint(tmp_path, wbag, capsys):
    path, name = _nan_file(tmp_path / 'nan.pt')
    before = path.read_bytes()
    rc, _, err = run_cli(capsys, 'train-ssm', '--bags', wbag, '--out', path, '--preset', 'debug',
                         '--resume', '--no-progress', *SETS16)
    assert_one_line_error(rc, err, 'train-ssm', f"tensor '{name}'", 'non-finite')
    assert path.read_bytes() == before


# --- training --------------------------------------------------------------------------------

def _poison_after(monkeypatch, cls, method: str, good_calls: int, out):
    """Make the training loss NaN from call ``good_calls + 1`` on; snapshot ``out`` then."""
    orig = getattr(cls, method)
    state = {'calls': 0, 'snapshot': None}

    def poisoned(self, *args, **kwargs):
        terms = orig(self, *args, **kwargs)
        if torch.is_grad_enabled() and self.training:
            state['calls'] += 1
            if state['calls'] > good_calls:
                if state['snapshot'] is None:
                    state['snapshot'] = out.read_bytes()
                terms['loss'] = terms['loss'] * NAN
        return terms
    monkeypatch.setattr(cls, method, poisoned)
    return state


def test_nan_loss_stops_train_ssm_and_keeps_the_last_checkpoint(wbag, tmp_path, monkeypatch):
    from world_model_ctrl import train_ssm
    from world_model_ctrl.ssm import WorldModel
    out = tmp_path / 'ssm.pt'
    state = _poison_after(monkeypatch, WorldModel, 'elbo', 2, out)
    cfg = train_ssm.resolve_config('debug', {
        'model': {'image_size': 16}, 'data': {'image_size': 16},
        'train': {'steps': 6, 'ckpt_every': 2, 'eval_every': 100, 'threads': 1}})
    with pytest.raises(RuntimeError, match=rf'loss is non-finite \(nan\) at step 3; .*last good '
                                           rf'checkpoint at {out} \(step 2\) is kept'):
        train_ssm.train([wbag], out, cfg, progress=False)
    assert out.read_bytes() == state['snapshot']        # bit-identical
    assert load_checkpoint(out, 'ssm')['extra']['step'] == 2


def test_nan_loss_stops_train_prior_and_keeps_the_last_checkpoint(wbag, tmp_path, monkeypatch):
    from world_model_ctrl import train_prior
    from world_model_ctrl.diffusion import PriorModel
    out = tmp_path / 'prior.pt'
    state = _poison_after(monkeypatch, PriorModel, 'loss', 2, out)
    cfg = train_prior.resolve_config('debug', {
        'model': {'image_size': 16}, 'data': {'image_size': 16},
        'train': {'steps': 6, 'ckpt_every': 2, 'sample_every': 100, 'threads': 1}})
    with pytest.raises(RuntimeError, match=r'loss is non-finite \(nan\) at step 3; .*\(step 2\) '
                                           r'is kept'):
        train_prior.train([wbag], out, cfg, progress=False)
    assert out.read_bytes() == state['snapshot']
    assert load_checkpoint(out, 'prior')['extra']['step'] == 2


def test_cli_train_ssm_that_diverges_exits_with_one_line(wbag, tmp_path):
    """A learning rate of 1e30 blows the model up at step 2: one line, exit 2, no traceback."""
    out = tmp_path / 'm.pt'
    proc = subprocess.run(
        [sys.executable, '-m', 'world_model_ctrl.cli', 'train-ssm', '--bags', str(wbag),
         '--out', str(out), '--preset', 'debug', '--steps', '5', '--no-progress',
         '--set', 'train.lr=1e30', '--set', 'train.warmup=1', '--set', 'train.ckpt_every=1',
         *SETS16], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, 'train-ssm', 'non-finite', 'at step',
                          f'last good checkpoint at {out} (step 1) is kept')
    assert proc.returncode == 2
    assert load_checkpoint(out, 'ssm')['extra']['step'] == 1      # finite, and loads


# --- command line ----------------------------------------------------------------------------

def test_yaml_syntax_error_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / 'my.yaml'
    bad.write_text('train:\n  steps: 5\n  lr: [0.1,\n')
    rc, _, err = run_cli(capsys, 'train-ssm', '--bags', tmp_path / 'nobag', '--out',
                         tmp_path / 'o.pt', '--config', bad)
    assert_one_line_error(rc, err, 'train-ssm', str(bad), 'YAML syntax error', 'line 4')
    rc, _, err = run_cli(capsys, 'train-prior', '--bags', tmp_path / 'nobag', '--out',
                         tmp_path / 'o.pt', '--set', 'train.lr=[1,')
    assert_one_line_error(rc, err, 'train-prior', "--set 'train.lr=[1,'", 'not valid YAML')


@pytest.mark.parametrize('flags, text', [
    (['--steps', '0'], 'train.steps must be >= 1, got 0'),
    (['--steps', '-5'], 'train.steps must be >= 1, got -5'),
    (['--batch-size', '0'], 'train.batch_size must be >= 1, got 0'),
    (['--seq-len', '0'], 'train.seq_len must be >= 1, got 0'),
    (['--lr', '0'], 'train.lr must be a finite number > 0, got 0.0'),
    (['--lr=-1e-3'], 'train.lr must be a finite number > 0, got -0.001'),
    (['--set', 'train.lr=.nan'], 'train.lr must be a finite number > 0, got nan'),
])
def test_nonpositive_training_values_are_refused_up_front(tmp_path, capsys, flags, text):
    for command in ('train-ssm', 'train-prior'):
        if command == 'train-prior' and '--seq-len' in flags:
            continue                                    # the prior trains on single frames
        rc, _, err = run_cli(capsys, command, '--bags', tmp_path / 'nobag', '--out',
                             tmp_path / 'o.pt', '--preset', 'debug', *flags)
        assert_one_line_error(rc, err, command, text)
    assert not (tmp_path / 'o.pt').exists()


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    src, dst = tmp_path / 'a.pt', tmp_path / 'b.pt'
    tiny_world_model().save(src)
    dst.write_bytes(b'precious')
    rc, _, err = run_cli(capsys, 'export', src, dst)
    assert_one_line_error(rc, err, 'export', f'{dst} exists', '--force')
    assert dst.read_bytes() == b'precious'
    rc, _, err = run_cli(capsys, 'export', src, dst, '--force')
    assert rc == 0 and load_checkpoint(dst, 'ssm')['config'] == load_checkpoint(src,
                                                                                 'ssm')['config']


def test_export_refuses_its_own_source_even_with_force(tmp_path, capsys, monkeypatch):
    src = tmp_path / 'a.pt'
    tiny_world_model().save(src, extra={'optimizer': {'state': {}, 'param_groups': []}})
    before = src.read_bytes()
    (tmp_path / 'link.pt').symlink_to(src)
    os.link(src, tmp_path / 'hard.pt')
    monkeypatch.chdir(tmp_path)
    for dst in (src, 'a.pt', tmp_path / 'sub' / '..' / 'a.pt', 'link.pt', 'hard.pt'):
        rc, _, err = run_cli(capsys, 'export', src, dst, '--force')
        assert_one_line_error(rc, err, 'export', 'is the source checkpoint')
    assert src.read_bytes() == before


def test_collect_refuses_a_tiny_image_size_before_starting(tmp_path, capsys):
    out = tmp_path / 'bag'
    rc, _, err = run_cli(capsys, 'collect', '--out', out, '--image-size', '4', '--episodes', '1',
                         '--steps', '1', '--no-progress')
    assert_one_line_error(rc, err, 'collect', 'image_size must be >= 8, got 4')
    assert not out.exists()
    rc, _, err = run_cli(capsys, 'collect', '--out', out, '--noise-std', '-1', '--no-progress')
    assert_one_line_error(rc, err, 'collect', 'noise_std must be >= 0')
    assert not out.exists()


def test_failed_collect_removes_its_incomplete_bag(tmp_path, ros_domain):
    """The explorer times out after the recorder has created the bag: nothing blocks a rerun."""
    from world_model_ctrl.collect import collect
    out = tmp_path / 'runs' / 'bag'
    with pytest.raises(TimeoutError, match='explorer did not finish'):
        collect(str(out), episodes=50, steps=50, timeout=0.5, domain_id=ros_domain,
                progress=False)
    assert out.parent.is_dir() and not out.exists()
