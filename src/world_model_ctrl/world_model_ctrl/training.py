"""What `train-ssm` and `train-prior` share: layered configs, run setup, resume, logging."""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import yaml

from world_model_ctrl.cem import resolve_device
from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.data import DataConfig, build_cache, split_episodes

log = logging.getLogger(__name__)


def load_yaml(path) -> dict:
    """A --config overlay; a YAML syntax error is a ValueError naming the file and line."""
    with open(path) as f:
        try:
            d = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
            what = getattr(e, 'problem', None) or str(e).splitlines()[0]
            raise ValueError(f'{path}: YAML syntax error{where}: {what}') from None
    if not isinstance(d, dict):
        raise ValueError(f'{path}: expected a mapping with model/data/train sections')
    return d


def layered_config(presets: dict, preset: str, overlay: Optional[dict], overrides: Optional[dict],
                   model_cls, train_cls) -> dict:
    """preset < YAML overlay < CLI overrides -> {'model', 'data', 'train'} dataclasses.

    A ``model.preset`` key picks the model class's own named preset under the overrides.
    """
    overlay = dict(overlay or {})
    preset = overlay.pop('preset', preset)
    if preset not in presets:
        raise ValueError(f'unknown preset {preset!r}; choose from {sorted(presets)}')
    bad = set(overlay) - {'model', 'data', 'train'}
    if bad:
        raise ValueError(f'config sections must be model, data, train; got {sorted(bad)}')
    merged: dict = {'model': {}, 'data': {}, 'train': {}}
    for layer in (presets[preset], overlay, overrides or {}):
        for section in merged:
            merged[section].update(layer.get(section) or {})
    model_preset = merged['model'].pop('preset', 'default')
    return {'model': model_cls.from_preset(model_preset, **merged['model']),
            'data': DataConfig.from_dict(merged['data']),
            'train': train_cls.from_dict(merged['train'])}


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    return dist.get_rank(), world, int(os.environ.get('LOCAL_RANK', '0'))


def setup_run(cfg: dict) -> tuple[int, int, torch.device]:
    """Rank, world size and device for a run; threads, denormals, seed; config sanity."""
    mcfg, dcfg, tcfg = cfg['model'], cfg['data'], cfg['train']
    rank, world, local_rank = distributed()
    device = resolve_device(tcfg.device)
    if device.type == 'cuda' and world > 1:
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    if device.type == 'cpu':
        # Denormal floats appear as training settles and slow CPU kernels several-fold.
        torch.set_flush_denormal(True)
    torch.manual_seed(tcfg.seed + rank)
    if mcfg.image_size != dcfg.image_size:
        raise ValueError(f'model image_size {mcfg.image_size} != data image_size '
                         f'{dcfg.image_size}: set both (data.image_size, model.image_size)')
    return rank, world, device


def episode_split(bags, out: Path, cache_dir, dcfg: DataConfig, rank: int, progress: bool,
                  min_len: int = 1):
    """One on-disk cache of the bags shared by all ranks, split by episode: (cache, train
    episode indices, validation episode indices). Episodes shorter than ``min_len`` frames
    (no training window; e.g. a recording's lead-in) go to training only, where they are
    skipped: the validation episodes are drawn from the others."""
    cache_dir = Path(cache_dir or out.parent / '.wmc_cache')
    cache = build_cache(list(bags), cache_dir, dcfg, progress=progress and rank == 0)
    usable = [i for i, n in enumerate(cache.lengths) if n >= min_len]
    _, val_eps = split_episodes(usable, dcfg.val_fraction, dcfg.seed)
    return cache, [i for i in range(len(cache)) if i not in val_eps], val_eps


def load_for_resume(out: Path, kind: str, model_config: dict,
                    loss_keys: tuple = ()) -> dict:
    """The checkpoint to continue, refused with a clear message if its model config differs.

    ``loss_keys`` only weigh the training loss, not the networks: a fine-tune may change them
    (or add them, to a checkpoint written before they existed); the new values are logged and
    the checkpoints it writes record them.
    """
    if not out.exists():
        raise FileNotFoundError(f'--resume: no checkpoint at {out}')
    ckpt = load_checkpoint(out, kind)
    old = ckpt['config']
    diff = {k: (old.get(k), model_config.get(k)) for k in set(old) | set(model_config)
            if k not in loss_keys and old.get(k) != model_config.get(k)}
    if diff:
        raise ValueError(f'--resume: {out} was trained with another model config '
                         f'(checkpoint vs now): {diff}')
    changed = {k: (old.get(k), model_config.get(k)) for k in loss_keys
               if old.get(k) != model_config.get(k)}
    if changed:
        log.info('--resume: loss weights changed (checkpoint vs now): %s', changed)
    return ckpt


def check_finite_step(loss: torch.Tensor, grad_norm: torch.Tensor, step: int, out: Path,
                      saved_step: Optional[int], world: int = 1) -> None:
    """Stop training at the first non-finite loss or gradient norm, before the optimiser step.

    ``step`` is the number of the step being taken (1-based); ``saved_step`` the step of the
    last checkpoint this run wrote or resumed from (None: none). One host sync per step; under
    torchrun the ranks agree, so all of them stop together.
    """
    values = torch.stack([loss.detach().float().reshape(()),
                          grad_norm.detach().float().reshape(())])
    local = torch.isfinite(values)
    ok = local
    if world > 1:
        import torch.distributed as dist
        flags = local.to(torch.float32)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        ok = flags.bool()
    if bool(ok.all()):
        return
    loss_v, gnorm_v = values.tolist()
    what = (f'loss is non-finite ({loss_v})' if not local[0] else
            f'gradient norm is non-finite ({gnorm_v}; loss {loss_v:.6g})' if not local[1] else
            'the loss or gradient norm is non-finite on another rank')
    kept = (f'the last good checkpoint at {out} (step {saved_step}) is kept'
            if saved_step is not None else
            f'no checkpoint was written by this run ({out} is left as it was)' if out.exists()
            else 'no checkpoint was written')
    raise RuntimeError(f'{what} at step {step}; training stopped before the update, {kept} '
                       f'(try a lower train.lr or check the data)')


def wrap_ddp(net: torch.nn.Module, world: int, device) -> torch.nn.Module:
    """DDP synchronises gradients through forward(): ``net``'s forward returns the loss dict."""
    if world <= 1:
        return net
    return torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == 'cuda' else None)


def summary_writer(rank: int, log_dir: Optional[str], out: Path):
    """TensorBoard writer on rank 0 (next to the checkpoint unless ``log_dir``), else None."""
    if rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir or str(out.with_suffix('')) + '_tb')


def autocast(device, bf16: bool):
    return (torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' and bf16
            else nullcontext())
