"""`wmc train-ssm`: fit the sequential VAE world model on rosbags (CleanRL-style, top to bottom).

Config = three dataclasses (model: SSMConfig, data: DataConfig, train: TrainConfig), resolved
from a named preset, an optional YAML overlay ({preset, model, data, train}) and CLI overrides;
the resolved config is stored in every checkpoint. Multi-GPU: `torchrun --nproc_per_node N
-m world_model_ctrl.cli train-ssm ...` (DistributedDataParallel, rank 0 logs and saves).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from world_model_ctrl.configs import check_positive, from_dict
from world_model_ctrl.actions import action_spec
from world_model_ctrl.data import DataConfig, SequenceDataset, frame_interval
from world_model_ctrl.ssm import CHECKPOINT_KIND, LOSS_KEYS, SSMConfig, WorldModel, images_to_tensor
from world_model_ctrl.training import (autocast, check_finite_step, episode_split,
                                       layered_config, load_for_resume, setup_run,
                                       summary_writer, wrap_ddp)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (the model and data have their own configs)."""

    steps: int = 3000           # gradient steps (in total, also when resumed)
    batch_size: int = 16        # sequences per step (per process under torchrun)
    seq_len: int = 32           # frames per training sequence
    lr: float = 6e-4            # Adam learning rate
    grad_clip: float = 100.0    # global gradient-norm clip
    warmup: int = 100           # linear learning-rate warm-up steps
    log_every: int = 25         # TensorBoard scalars every N steps
    eval_every: int = 500       # validation ELBO + image grids every N steps
    ckpt_every: int = 500       # checkpoint every N steps (and at the end)
    val_windows: int = 64       # validation windows evaluated each time
    seed: int = 0               # torch / sampling seed
    device: str = 'auto'        # auto | cpu | cuda | cuda:N
    bf16: bool = True           # bf16 autocast on CUDA (ignored on CPU)
    threads: int = 0            # torch CPU threads (0 = torch's default)
    num_workers: int = 0        # DataLoader workers

    def __post_init__(self):
        for name in ('steps', 'batch_size', 'seq_len', 'log_every', 'eval_every', 'ckpt_every',
                     'val_windows'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name} must be >= 1, got {getattr(self, name)}')
        for name in ('warmup', 'threads', 'num_workers'):
            if getattr(self, name) < 0:
                raise ValueError(f'train.{name} must be >= 0, got {getattr(self, name)}')
        check_positive(self, 'train', 'lr', 'grad_clip')

    @classmethod
    def from_dict(cls, d: dict) -> 'TrainConfig':
        return from_dict(cls, d, 'train parameters')


# Named presets over the dataclass defaults: model + train overlays.
PRESETS = {
    'default': {'model': {}, 'train': {}},
    # Sized for CPU training in tens of minutes on 2 cores: the shipped checkpoint uses it.
    'small': {'model': dict(cnn_depth=16, embed_dim=128, gru_hidden=128, latent_dim=16,
                            hidden=128),
              'train': dict(steps=2000, batch_size=16, seq_len=24)},
    # Seconds, for tests and smoke runs.
    'debug': {'model': {'preset': 'debug'},
              'train': dict(steps=30, batch_size=4, seq_len=8, log_every=5, eval_every=15,
                            ckpt_every=15, val_windows=8, warmup=5)},
}


def resolve_config(preset: str = 'default', overlay: Optional[dict] = None,
                   overrides: Optional[dict] = None) -> dict:
    """-> {'model': SSMConfig, 'data': DataConfig, 'train': TrainConfig}. Later wins."""
    return layered_config(PRESETS, preset, overlay, overrides, SSMConfig, TrainConfig)


def _batch_to(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = images_to_tensor(batch['images'].to(device, non_blocking=True))   # (B, T, 3, S, S)
    return images, batch['actions'].to(device), batch['rewards'].to(device)


@torch.no_grad()
def evaluate_windows(model: WorldModel, dataset: SequenceDataset, n: int, device,
                     seed: int = 0) -> dict:
    """Mean ELBO terms over up to ``n`` fixed validation windows."""
    if len(dataset) == 0:
        return {}
    idx = np.random.default_rng(seed).choice(len(dataset), min(n, len(dataset)), replace=False)
    totals: dict[str, float] = {}
    g = torch.Generator(device=device).manual_seed(seed)
    for chunk in np.array_split(idx, max(1, math.ceil(len(idx) / 16))):
        batch = torch.utils.data.default_collate([dataset[int(i)] for i in chunk])
        images, actions, rewards = _batch_to(batch, device)
        terms = model.elbo(images, actions, rewards, generator=g)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    return {k: v / len(idx) for k, v in totals.items()}


def train(bags, out, cfg: dict, resume: bool = False, log_dir: Optional[str] = None,
          cache_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Train and write checkpoints to ``out``; returns a summary (throughput, final metrics)."""
    mcfg: SSMConfig = cfg['model']
    dcfg: DataConfig = cfg['data']
    tcfg: TrainConfig = cfg['train']
    rank, world, device = setup_run(cfg)
    out = Path(out)

    cache, train_idx, val_idx = episode_split(bags, out, cache_dir, dcfg, rank, progress,
                                              min_len=tcfg.seq_len)
    train_set = SequenceDataset(cache, tcfg.seq_len, train_idx)
    val_set = SequenceDataset(cache, tcfg.seq_len, val_idx) if val_idx else None
    sampler_gen = torch.Generator().manual_seed(tcfg.seed * 1000 + rank)
    sampler = torch.utils.data.RandomSampler(train_set, replacement=True,
                                             num_samples=tcfg.steps * tcfg.batch_size,
                                             generator=sampler_gen)
    loader = torch.utils.data.DataLoader(train_set, tcfg.batch_size, sampler=sampler,
                                         num_workers=tcfg.num_workers, drop_last=True,
                                         pin_memory=device.type == 'cuda')

    # -- model, optimiser, resume -----------------------------------------------------------
    model = WorldModel(mcfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, eps=1e-5)
    step = 0
    saved_step = None           # the step of the last good checkpoint (kept if training fails)
    if resume:
        ckpt = load_for_resume(out, CHECKPOINT_KIND, mcfg.to_dict(), LOSS_KEYS)
        model.load_state_dict(ckpt['state_dict'])
        extra = ckpt['extra']
        if 'optimizer' in extra:
            opt.load_state_dict(extra['optimizer'])
        step = int(extra.get('step', 0))
        saved_step = step
        log.info('resumed %s at step %d', out, step)
    # what the nodes check a live robot against: the model's step and its actions' meaning
    recorded = {'frame_interval_s': frame_interval(cache),
                'action': action_spec(dcfg.action_fields, cache.actions)}
    net = wrap_ddp(_ELBO(model), world, device)
    writer = summary_writer(rank, log_dir, out)
    amp = autocast(device, tcfg.bf16)

    def save(metrics: dict):
        nonlocal saved_step
        saved_step = step
        if rank != 0:
            return
        model.save(out, extra={
            **recorded, 'step': step, 'optimizer': opt.state_dict(), 'metrics': metrics,
            'data': dcfg.to_dict(), 'train': asdict(tcfg),
            'dataset': {'bags': [str(b) for b in bags], 'episodes': len(cache),
                        'frames': cache.num_frames, 'train_episodes': len(train_idx),
                        'val_episodes': len(val_idx)}})

    def log_images(tag_step: int):
        if writer is None or val_set is None or len(val_set) == 0:
            return
        batch = torch.utils.data.default_collate([val_set[i] for i in range(min(4, len(val_set)))])
        images, actions, _ = _batch_to(batch, device)
        post = model.observe(images, actions)
        recon = model.decode(post.mean).clamp(0, 1)
        writer.add_images('val/reconstruction', torch.cat([images[:, -1], recon[:, -1]]),
                          tag_step)
        ctx = max(1, images.shape[1] // 2)
        pred = model.openloop(images, actions, ctx, images.shape[1] - ctx)
        writer.add_images('val/openloop_last', torch.cat([images[:, -1], pred[:, -1]]), tag_step)

    remaining = tcfg.steps - step
    if remaining <= 0:
        log.info('already trained for %d steps', step)
    metrics: dict = {}
    t0, seqs = time.perf_counter(), 0
    bar = tqdm(total=tcfg.steps, initial=step, desc='train-ssm', unit='step',
               disable=not progress or rank != 0, dynamic_ncols=True)
    model.train()
    it = iter(loader)
    while step < tcfg.steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        images, actions, rewards = _batch_to(batch, device)
        for group in opt.param_groups:
            group['lr'] = tcfg.lr * min(1.0, (step + 1) / max(1, tcfg.warmup))
        with amp:
            terms = net(images, actions, rewards)
        opt.zero_grad(set_to_none=True)
        terms['loss'].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        check_finite_step(terms['loss'], gnorm, step + 1, out, saved_step, world)
        opt.step()
        step += 1
        seqs += images.shape[0] * world
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            bar.set_postfix(elbo=f"{float(terms['elbo']):.1f}", kl=f"{float(terms['kl']):.2f}")
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f'train/{k}', float(v.detach()), step)
                writer.add_scalar('train/grad_norm', float(gnorm), step)
                writer.add_scalar('train/seq_per_s', seqs / (time.perf_counter() - t0), step)
        if rank == 0 and val_set is not None and (step % tcfg.eval_every == 0
                                                  or step == tcfg.steps):
            model.eval()
            metrics = {f'val_{k}': v for k, v in evaluate_windows(
                model, val_set, tcfg.val_windows, device, seed=tcfg.seed).items()}
            for k, v in metrics.items():
                writer.add_scalar(f'val/{k[4:]}', v, step)
            log_images(step)
            model.train()
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            save(metrics)
    bar.close()
    elapsed = time.perf_counter() - t0
    if writer is not None:
        writer.close()
    model.eval()
    return {'checkpoint': str(out), 'steps': step, 'seconds': round(elapsed, 2),
            'seq_per_s': round(seqs / elapsed, 2) if remaining > 0 and elapsed > 0 else None,
            'frames_per_s': round(seqs * tcfg.seq_len / elapsed, 1)
            if remaining > 0 and elapsed > 0 else None,
            'device': str(device), 'world_size': world, **metrics}


class _ELBO(torch.nn.Module):
    def __init__(self, model: WorldModel):
        super().__init__()
        self.model = model

    def forward(self, images, actions, rewards) -> dict:
        return self.model.elbo(images, actions, rewards)
