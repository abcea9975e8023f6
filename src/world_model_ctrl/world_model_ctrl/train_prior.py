"""`wmc train-prior`: fit the DDPM image prior on the camera frames of rosbags (CleanRL-style).

Config = three dataclasses (model: DiffusionConfig, data: DataConfig, train: TrainPriorConfig),
resolved from a named preset, an optional YAML overlay ({preset, model, data, train}) and CLI
overrides, exactly as train-ssm. Frames come from the same dataset cache, split by episode; each
batch is frames drawn at random from the training episodes. The checkpoint holds the EMA weights
(what sampling and scoring use), the raw weights and optimiser for --resume, and, once training
ends, the OOD threshold calibrated on held-out frames. Multi-GPU: `torchrun --nproc_per_node N
-m world_model_ctrl.cli train-prior ...` (DistributedDataParallel, rank 0 logs and saves).
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
from world_model_ctrl.data import DataConfig
from world_model_ctrl.diffusion import (CHECKPOINT_KIND, EMA, DiffusionConfig, PriorModel,
                                        calibrate_threshold)
from world_model_ctrl.eval_prior import map_batches, spread
from world_model_ctrl.ssm import images_to_tensor
from world_model_ctrl.training import (autocast, check_finite_step, episode_split,
                                       layered_config, load_for_resume, setup_run,
                                       summary_writer, wrap_ddp)
from world_model_ctrl.validity import validity_fraction

log = logging.getLogger(__name__)


@dataclass
class TrainPriorConfig:
    """Optimisation and bookkeeping (the model and data have their own configs)."""

    steps: int = 20000          # gradient steps (in total, also when resumed)
    batch_size: int = 32        # frames per step (per process under torchrun)
    lr: float = 2e-4            # Adam learning rate
    grad_clip: float = 1.0      # global gradient-norm clip
    warmup: int = 500           # linear learning-rate warm-up steps
    log_every: int = 50         # TensorBoard scalars every N steps
    sample_every: int = 2000    # validation loss, DDIM sample grid and its validity every N steps
    ckpt_every: int = 2000      # checkpoint every N steps (and at the end)
    val_frames: int = 256       # held-out frames for the validation loss (fixed t and noise)
    samples: int = 16           # DDIM samples per TensorBoard grid
    calib_frames: int = 1024    # held-out frames the OOD threshold is calibrated on, at the end
    ood_quantile: float = 0.99  # threshold = this quantile of held-out OOD scores
    seed: int = 0               # torch / sampling seed
    device: str = 'auto'        # auto | cpu | cuda | cuda:N
    bf16: bool = True           # bf16 autocast on CUDA (ignored on CPU)
    threads: int = 0            # torch CPU threads (0 = torch's default)
    max_minutes: float = 0.0    # also stop (evaluate, calibrate, save) after this long; 0 = off

    def __post_init__(self):
        for name in ('steps', 'batch_size', 'log_every', 'sample_every', 'ckpt_every',
                     'samples'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name} must be >= 1, got {getattr(self, name)}')
        for name in ('warmup', 'threads', 'val_frames', 'calib_frames'):
            if getattr(self, name) < 0:
                raise ValueError(f'train.{name} must be >= 0, got {getattr(self, name)}')
        check_positive(self, 'train', 'lr', 'grad_clip')
        if self.max_minutes < 0:
            raise ValueError(f'train.max_minutes must be >= 0, got {self.max_minutes}')
        if not 0.0 < self.ood_quantile < 1.0:
            raise ValueError(f'train.ood_quantile must be in (0, 1), got {self.ood_quantile}')

    @classmethod
    def from_dict(cls, d: dict) -> 'TrainPriorConfig':
        return from_dict(cls, d, 'train parameters')


# Named presets over the dataclass defaults: model + train overlays.
PRESETS = {
    'default': {'model': {}, 'train': {}},
    # The shipped prior's UNet (0.5 GFLOP per 64x64 frame). These train settings suit 2 CPU
    # cores (~50 min: a working OOD score); clean samples need ~1.4 M images, e.g. on a GPU
    # --set train.batch_size=128 --steps 10000 (see the model card).
    'small': {'model': {'preset': 'small'},
              'train': dict(steps=6000, batch_size=16, lr=4e-4, warmup=200, sample_every=1000,
                            ckpt_every=500, calib_frames=512)},
    # Seconds, for tests and smoke runs.
    'debug': {'model': {'preset': 'debug'},
              'train': dict(steps=30, batch_size=8, lr=2e-3, warmup=5, log_every=5,
                            sample_every=15, ckpt_every=15, val_frames=16, samples=4,
                            calib_frames=32)},
}


def resolve_config(preset: str = 'default', overlay: Optional[dict] = None,
                   overrides: Optional[dict] = None) -> dict:
    """-> {'model': DiffusionConfig, 'data': DataConfig, 'train': TrainPriorConfig}."""
    return layered_config(PRESETS, preset, overlay, overrides, DiffusionConfig,
                          TrainPriorConfig)


def episode_frames(cache, episodes_idx) -> np.ndarray:
    """Cache frame indices of the given episodes, (N,) int64."""
    parts = [np.arange(cache.offsets[i], cache.offsets[i + 1]) for i in episodes_idx]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def frames_to_tensor(cache, idx: np.ndarray, device) -> torch.Tensor:
    """Frames ``idx`` of the cache -> float (B, C, S, S) in [0, 1] on ``device``."""
    images = torch.from_numpy(np.asarray(cache.images[np.sort(idx)]))     # (B, S, S, 3) uint8
    return images_to_tensor(images.to(device, non_blocking=True))


@torch.no_grad()
def validation_loss(model: PriorModel, cache, idx: np.ndarray, device, seed: int = 0) -> dict:
    """Mean loss terms over fixed frames with fixed t and noise: comparable across steps."""
    g = torch.Generator(device=device).manual_seed(seed)
    totals: dict[str, float] = {}
    for chunk in np.array_split(idx, max(1, math.ceil(len(idx) / 64))):
        terms = model.loss(frames_to_tensor(cache, chunk, device), generator=g)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    return {k: v / len(idx) for k, v in totals.items()}


def train(bags, out, cfg: dict, resume: bool = False, log_dir: Optional[str] = None,
          cache_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Train and write checkpoints to ``out``; returns a summary (throughput, final metrics)."""
    mcfg: DiffusionConfig = cfg['model']
    dcfg: DataConfig = cfg['data']
    tcfg: TrainPriorConfig = cfg['train']
    rank, world, device = setup_run(cfg)
    out = Path(out)

    cache, train_eps, val_eps = episode_split(bags, out, cache_dir, dcfg, rank, progress)
    train_idx, val_idx = episode_frames(cache, train_eps), episode_frames(cache, val_eps)
    rng = np.random.default_rng(tcfg.seed * 1000 + rank)

    # -- model, EMA, optimiser, resume ------------------------------------------------------
    model = PriorModel(mcfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    step = 0
    saved_step = None           # the step of the last good checkpoint (kept if training fails)
    ckpt = None
    if resume:
        ckpt = load_for_resume(out, CHECKPOINT_KIND, mcfg.to_dict())
        extra = ckpt['extra']
        model.load_state_dict(extra.get('raw_state_dict', ckpt['state_dict']))
        if 'optimizer' in extra:
            opt.load_state_dict(extra['optimizer'])
        step = int(extra.get('step', 0))
        saved_step = step
        rng = np.random.default_rng([tcfg.seed * 1000 + rank, step])   # fresh frames after resume
        log.info('resumed %s at step %d', out, step)
    ema = EMA(model, mcfg.ema_decay, updates=step)
    if ckpt is not None:
        ema.model.load_state_dict(ckpt['state_dict'])
    net = wrap_ddp(_Loss(model), world, device)
    writer = summary_writer(rank, log_dir, out)
    amp = autocast(device, tcfg.bf16)
    val_subset = spread(val_idx, tcfg.val_frames)

    def save(metrics: dict, ood: Optional[dict] = None):
        nonlocal saved_step
        saved_step = step
        if rank != 0:
            return
        ema.model.save(out, extra={
            'step': step, 'raw_state_dict': model.state_dict(), 'optimizer': opt.state_dict(),
            'metrics': metrics, 'ood': ood, 'data': dcfg.to_dict(), 'train': asdict(tcfg),
            'dataset': {'bags': [str(Path(b).resolve()) for b in bags], 'episodes': len(cache),
                        'frames': cache.num_frames, 'train_episodes': len(train_eps),
                        'val_episodes': len(val_eps)}})

    def evaluate(tag_step: int) -> dict:
        """Validation loss, a DDIM sample grid and the share of valid samples (rank 0)."""
        metrics = {}
        if len(val_subset):
            metrics = {f'val_{k}': v for k, v in validation_loss(
                ema.model, cache, val_subset, device, tcfg.seed).items()}
        g = torch.Generator(device=device).manual_seed(tcfg.seed)
        with amp:
            samples = ema.model.ddim_sample(tcfg.samples, generator=g).float()
        imgs = (samples * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        metrics['sample_validity'], _ = validity_fraction(imgs)
        for k, v in metrics.items():
            writer.add_scalar(f'val/{k[4:]}' if k.startswith('val_') else f'val/{k}', v,
                              tag_step)
        writer.add_images('samples/ddim', samples, tag_step)
        return metrics

    def calibrate() -> Optional[dict]:
        """OOD threshold from held-out frames' scores (EMA weights), stored in the checkpoint."""
        if not len(val_idx):
            log.warning('no held-out episodes: the OOD threshold is left uncalibrated')
            return None
        idx = spread(val_idx, tcfg.calib_frames)
        # float32 even on GPU: the scores it is compared with later come from float32 runs
        scores = map_batches(ema.model.ood_score, np.asarray(cache.images[idx]), device)
        return {'threshold': calibrate_threshold(scores, tcfg.ood_quantile),
                'quantile': tcfg.ood_quantile, 'frames': len(idx),
                't_levels': ema.model.diffusion.default_ood_levels(), 'n_noise': 1, 'seed': 0,
                'score_mean': float(scores.mean()), 'score_max': float(scores.max())}

    remaining = tcfg.steps - step
    if remaining <= 0:
        log.info('already trained for %d steps', step)
    metrics: dict = {}
    ood = None
    t0, seen, side = time.perf_counter(), 0, 0.0
    bar = tqdm(total=tcfg.steps, initial=step, desc='train-prior', unit='step',
               disable=not progress or rank != 0, dynamic_ncols=True)
    model.train()
    last = step >= tcfg.steps
    while not last:
        images = frames_to_tensor(cache, rng.choice(train_idx, tcfg.batch_size), device)
        for group in opt.param_groups:
            group['lr'] = tcfg.lr * min(1.0, (step + 1) / max(1, tcfg.warmup))
        with amp:
            terms = net(images)
        opt.zero_grad(set_to_none=True)
        terms['loss'].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        check_finite_step(terms['loss'], gnorm, step + 1, out, saved_step, world)
        opt.step()
        ema.update(model)
        step += 1
        seen += images.shape[0] * world
        bar.update(1)
        last = step >= tcfg.steps or out_of_time(time.perf_counter() - t0, tcfg.max_minutes,
                                                 world, device)
        if step % tcfg.log_every == 0 or last:
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f'train/{k}', float(v.detach()), step)
                writer.add_scalar('train/grad_norm', float(gnorm), step)
                writer.add_scalar('train/images_per_s',
                                  seen / (time.perf_counter() - t0 - side), step)
        t_side = time.perf_counter()
        if rank == 0 and (step % tcfg.sample_every == 0 or last):
            metrics = evaluate(step)
            log.info('step %d: %s', step, ', '.join(f'{k} {v:.4g}' for k, v in metrics.items()))
        if step % tcfg.ckpt_every == 0 or last:
            if last and rank == 0:
                ood = calibrate()
            save(metrics, ood)
        side += time.perf_counter() - t_side
    bar.close()
    elapsed = time.perf_counter() - t0
    train_s = elapsed - side            # throughput counts training steps only
    if writer is not None:
        writer.close()
    model.eval()
    trained = remaining > 0 and train_s > 0
    stopped_by_time = step < tcfg.steps
    if stopped_by_time:
        log.warning('stopped by train.max_minutes=%g at step %d of %d', tcfg.max_minutes, step,
                    tcfg.steps)
    return {'checkpoint': str(out), 'steps': step, 'stopped_by_time': stopped_by_time,
            'seconds': round(elapsed, 2),
            'images_per_s': round(seen / train_s, 1) if trained else None,
            'device': str(device), 'world_size': world,
            'ood_threshold': ood['threshold'] if ood else None, **metrics}


def out_of_time(elapsed_s: float, max_minutes: float, world: int = 1, device=None) -> bool:
    """True once ``max_minutes`` (0 = no limit) have passed; under torchrun all ranks agree."""
    if max_minutes <= 0:
        return False
    over = elapsed_s >= 60.0 * max_minutes
    if world > 1:
        import torch.distributed as dist
        flag = torch.tensor(float(over), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)     # rank 0's clock may run ahead
        over = bool(flag.item())
    return over


class _Loss(torch.nn.Module):
    def __init__(self, model: PriorModel):
        super().__init__()
        self.model = model

    def forward(self, images) -> dict:
        return self.model.loss(images)


__all__ = ['TrainPriorConfig', 'PRESETS', 'resolve_config', 'train', 'out_of_time',
           'episode_frames', 'frames_to_tensor', 'validation_loss']
