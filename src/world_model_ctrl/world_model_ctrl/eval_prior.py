"""`wmc eval-prior` and `wmc score-prior`: likelihood, sample validity and OOD detection.

Keys of eval_prior's result:
- ``bits_per_dim``: the bound L_T + sum_{t>=2} L_{t-1} + L_0 (theory.md section 3) in bits per
  dimension, mean over held-out frames; t is stratified into ``nll_steps`` strata (unbiased).
  Also ``bits_per_dim_terms`` (prior, diffusion, decoder) and ``bits_per_dim_per_frame``.
- ``sample_validity``: share of DDIM samples (config.sample_steps) that validity.frame_validity
  accepts; ``sample_failures`` tallies the reasons of the others.
- ``ood_auroc``: AUROC of the per-frame ood_score, held-out frames against corrupted copies, all
  corruptions pooled (each as many as the clean frames, so this is the mean of
  ``ood_auroc_per_corruption``). Corruptions: gaussian noise, an occluding patch, a colour shift,
  blur, an extra object on the floor, and a changed room (other floor and wall colours).
- ``ood_threshold``: the ``ood_quantile`` of the held-out scores (calibrated on these frames);
  ``ood_threshold_checkpoint`` the one stored at training, with its false-positive rate on these
  frames and its detection rate per corruption.

Held-out frames are the validation episodes when ``bags`` are exactly the bags the checkpoint was
trained on (the same split), and every frame when none of them was.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from room_sim.world import RoomWorld, WorldConfig
from world_model_ctrl.checkpoint import load_checkpoint, save_checkpoint
from world_model_ctrl.data import DataConfig, load_episodes, split_episodes
from world_model_ctrl.diffusion import CHECKPOINT_KIND, PriorModel, calibrate_threshold
from world_model_ctrl.ssm import images_to_tensor
from world_model_ctrl.validity import frame_validity, tally_reasons

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


def auroc(positive, negative) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney U)."""
    pos = np.asarray(positive, np.float64).ravel()
    neg = np.asarray(negative, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError('auroc needs at least one positive and one negative score')
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind='mergesort')
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # tied scores share the mean of their ranks
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


# ---- corruptions: (N, S, S, 3) uint8 frames + rng -> corrupted copies ---------------------------

def _noise(frames, rng):
    return np.clip(frames + rng.normal(0.0, 20.0, frames.shape), 0, 255).astype(np.uint8)


def _occlusion(frames, rng):
    out, s = frames.copy(), frames.shape[1]
    side = max(2, s // 4)
    for f in out:
        r, c = rng.integers(0, s - side + 1, 2)
        f[r:r + side, c:c + side] = 0
    return out


def _colour_shift(frames, rng):
    shift = rng.normal(size=(len(frames), 1, 1, 3))
    shift *= 30.0 / np.linalg.norm(shift, axis=-1, keepdims=True)      # 30 levels, any hue
    return np.clip(frames + shift, 0, 255).astype(np.uint8)


def _blur(frames, rng):
    sigma = max(0.7, frames.shape[1] / 64)
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def _extra_object(frames, rng):
    out, s = frames.copy(), frames.shape[1]
    side, wall = max(1, round(0.075 * s)), math.ceil(0.05 * s)       # 0.15 m box, 0.1 m wall
    for f in out:
        r, c = rng.integers(wall, s - wall - side + 1, 2)
        f[r:r + side, c:c + side] = (40, 90, 255)
    return out


def _changed_room(frames, rng):
    cfg = WorldConfig(image_size=frames.shape[1], random_goal=True,
                      floor_color=(70, 50, 30), wall_color=(80, 80, 150))
    world = RoomWorld(cfg, seed=int(rng.integers(2 ** 31)))
    return np.stack([world.reset() for _ in frames])


CORRUPTIONS = {'noise': _noise, 'occlusion': _occlusion, 'colour_shift': _colour_shift,
               'blur': _blur, 'extra_object': _extra_object, 'room': _changed_room}


# ---- frames ---------------------------------------------------------------------------------

def fit_size(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3), area-averaged as the dataset does."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f'frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}')
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def frames_from_dir(path, size: int) -> tuple[np.ndarray, list[str]]:
    """Every image file in ``path`` (sorted by name) as RGB (N, size, size, 3), with the names."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f'no {"/".join(IMAGE_SUFFIXES)} images in {path}')
    frames = []
    for p in files:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'{p}: not a readable image')
        frames.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size),
                                 interpolation=cv2.INTER_AREA))
    return np.stack(frames), [p.name for p in files]


def _data_config(model: PriorModel) -> DataConfig:
    data = model.checkpoint_extra.get('data')
    return DataConfig.from_dict(data) if data else DataConfig(image_size=model.config.image_size)


def frames_from_bags(bags, model: PriorModel, progress: bool = False) -> np.ndarray:
    """All frames of the bags, read with the checkpoint's data config: (N, S, S, 3) uint8."""
    episodes = load_episodes(bags, _data_config(model), progress=progress)
    return np.concatenate([e.images for e in episodes])


def held_out_frames(model: PriorModel, bags, progress: bool = False) -> tuple[np.ndarray, str]:
    """Frames the model was not trained on (see module docstring), and which they are."""
    cfg = _data_config(model)
    episodes = load_episodes(bags, cfg, progress=progress)
    trained = {str(Path(b).resolve())
               for b in (model.checkpoint_extra.get('dataset') or {}).get('bags', [])}
    given = {str(Path(b).resolve()) for b in bags}
    if trained and given == trained:
        _, episodes = split_episodes(episodes, cfg.val_fraction, cfg.seed)
        if not episodes:
            raise ValueError('these are the training bags and the split holds no validation '
                             'episode (val_fraction 0?): pass bags the prior never saw')
        source = 'validation episodes of the training bags'
    elif given & trained:
        raise ValueError(f'some bags were used for training ({sorted(given & trained)}): pass '
                         'exactly the training bags (their validation split is used) or unseen '
                         'bags')
    else:
        source = 'all episodes (bags not used in training)'
    return np.concatenate([e.images for e in episodes]), source


def spread(items: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` evenly spaced entries (a fixed, reproducible subset)."""
    if len(items) <= n:
        return items
    return items[np.linspace(0, len(items) - 1, n).round().astype(np.int64)]


def map_batches(fn, frames: np.ndarray, device, batch: int = 64) -> np.ndarray:
    """fn over (B, C, S, S) [0, 1] tensors made from (N, S, S, 3) uint8 frames -> numpy."""
    out = []
    for i in range(0, len(frames), batch):
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])))
        out.append(fn(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


# ---- scoring and evaluation -------------------------------------------------------------------

def _load(ckpt, device) -> PriorModel:
    if isinstance(ckpt, PriorModel):
        return ckpt.to(device).eval()
    return PriorModel.from_checkpoint(ckpt, device=device)


@torch.no_grad()
def score_frames(ckpt: Union[str, Path, PriorModel], frames: np.ndarray, device='cpu',
                 batch_size: int = 64) -> dict:
    """Per-frame OOD scores for (N, H, W, 3) uint8 frames (resized to the model's size), and
    whether each is above the checkpoint's calibrated threshold (None if it has none)."""
    model = _load(ckpt, device)
    frames = fit_size(frames, model.config.image_size)
    scores = map_batches(model.ood_score, frames, device, batch_size)
    thr = model.ood_threshold
    ood = model.checkpoint_extra.get('ood') or {}
    return {'scores': scores.tolist(), 'threshold': thr,
            'above_threshold': None if thr is None else [bool(s > thr) for s in scores],
            'fraction_above': None if thr is None else float(np.mean(scores > thr)),
            'frames': len(frames),
            't_levels': ood.get('t_levels') or model.diffusion.default_ood_levels()}


def _save_png(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@torch.no_grad()
def evaluate_prior(model: PriorModel, frames: np.ndarray, samples: int = 64,
                   nll_steps: Optional[int] = 32, device='cpu', seed: int = 0,
                   save_samples_dir=None, corruptions: Sequence[str] = tuple(CORRUPTIONS),
                   batch_size: int = 32) -> dict:
    """Metrics of the module docstring on held-out ``frames`` (N, S, S, 3) uint8."""
    model = model.to(device).eval()
    frames = fit_size(frames, model.config.image_size)
    out: dict = {'frames': len(frames)}

    # -- likelihood bound -------------------------------------------------------------------
    g = torch.Generator().manual_seed(seed)
    terms = {k: [] for k in ('prior', 'diffusion', 'decoder', 'total')}
    for i in range(0, len(frames), batch_size):
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])))
        for k, v in model.nll_terms(x.to(device), nll_steps, g).items():
            terms[k].append(v.cpu().numpy())
    per_frame = {k: np.concatenate(v) for k, v in terms.items()}
    out['bits_per_dim'] = float(per_frame['total'].mean())
    out['bits_per_dim_terms'] = {k: float(v.mean()) for k, v in per_frame.items()
                                 if k != 'total'}
    out['bits_per_dim_per_frame'] = [round(float(b), 5) for b in per_frame['total']]
    out['nll_steps'] = nll_steps if nll_steps is not None else model.config.timesteps - 1

    # -- samples ----------------------------------------------------------------------------
    g = torch.Generator(device=device).manual_seed(seed)
    imgs = []
    for i in range(0, samples, batch_size):
        x = model.ddim_sample(min(batch_size, samples - i), generator=g)
        imgs.append((x * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    imgs = np.concatenate(imgs) if imgs else np.zeros((0, *frames.shape[1:]), np.uint8)
    verdicts = [frame_validity(f) for f in imgs]
    out['samples'] = len(imgs)
    out['sample_steps'] = model.config.sample_steps
    out['sample_validity'] = float(np.mean([ok for ok, _ in verdicts])) if verdicts else None
    out['sample_failures'] = tally_reasons(r for _, r in verdicts)
    if save_samples_dir is not None:
        d = Path(save_samples_dir)
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(imgs):
            _save_png(d / f'sample_{i:03d}.png', f)
        (d / 'samples.json').write_text(json.dumps(
            [{'file': f'sample_{i:03d}.png', 'valid': ok, 'reasons': r}
             for i, (ok, r) in enumerate(verdicts)], indent=1))
        out['samples_dir'] = str(d)

    # -- OOD detection ----------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    clean = map_batches(model.ood_score, frames, device, batch_size)
    corrupted = {name: map_batches(model.ood_score, CORRUPTIONS[name](frames, rng), device,
                                   batch_size) for name in corruptions}
    if corrupted:
        out['ood_auroc'] = auroc(np.concatenate(list(corrupted.values())), clean)
        out['ood_auroc_per_corruption'] = {k: auroc(v, clean) for k, v in corrupted.items()}
    ood = model.checkpoint_extra.get('ood') or {}
    quantile = ood.get('quantile', 0.99)
    out['ood_quantile'] = quantile
    out['ood_threshold'] = calibrate_threshold(clean, quantile)
    out['ood_score_clean_mean'] = float(clean.mean())
    thr = ood.get('threshold')
    out['ood_threshold_checkpoint'] = thr
    if thr is not None:
        out['ood_false_positive_rate'] = float(np.mean(clean > thr))
        out['ood_detection_rate'] = {k: float(np.mean(v > thr)) for k, v in corrupted.items()}
    return out


def eval_prior(ckpt, bags, samples: int = 64, frames: int = 128, nll_steps: Optional[int] = 32,
               save_samples_dir=None, device='cpu', seed: int = 0, progress: bool = False,
               save_threshold: bool = False) -> dict:
    """Evaluate a prior checkpoint on held-out frames of ``bags`` (at most ``frames``, evenly
    spread). ``save_threshold`` writes the threshold calibrated here into the checkpoint."""
    model = PriorModel.from_checkpoint(ckpt, device=device)
    held_out, source = held_out_frames(model, bags, progress)
    out = evaluate_prior(model, spread(held_out, frames), samples, nll_steps, device, seed,
                         save_samples_dir)
    out.update({'checkpoint': str(ckpt), 'bags': [str(b) for b in bags], 'device': str(device),
                'held_out': source, 'held_out_frames_available': len(held_out)})
    if save_threshold:
        raw = load_checkpoint(ckpt, CHECKPOINT_KIND)
        old = raw['extra'].get('ood') or {}
        raw['extra']['ood'] = {**old, 'threshold': out['ood_threshold'],
                               'quantile': out['ood_quantile'], 'frames': out['frames'],
                               't_levels': old.get('t_levels',
                                                   model.diffusion.default_ood_levels()),
                               'calibrated_by': 'eval-prior'}
        save_checkpoint(ckpt, CHECKPOINT_KIND, raw['config'], raw['state_dict'], raw['extra'])
    return out


__all__ = ['auroc', 'CORRUPTIONS', 'score_frames', 'evaluate_prior', 'eval_prior',
           'held_out_frames', 'frames_from_bags', 'frames_from_dir', 'fit_size', 'spread',
           'map_batches']
