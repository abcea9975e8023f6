"""`wmc eval-ssm`: held-out ELBO, open-loop prediction against copy-last-frame, reward error.

Open loop at horizon h: filter the first ``context`` frames of a window, then imagine the next
frames under the *recorded* actions (prior mean path) and decode; compare the decoded frame
context-1+h with the true one. The baseline repeats the last context frame. Pixels are in [0, 1].
``openloop_reward_rmse`` scores the reward head on the same imagined states against the
recorded rewards: what CEM ranks its plans by; its baseline ``copy_last_reward_rmse`` keeps
the last context frame's reward.
"""
from __future__ import annotations

import numpy as np
import torch

from world_model_ctrl.data import DataConfig, load_episodes
from world_model_ctrl.ssm import WorldModel, images_to_tensor

HORIZONS = (1, 5, 10, 15)


def _windows(episodes, length: int, stride: int):
    """(images, actions, rewards) windows of ``length`` frames inside episodes."""
    for ep in episodes:
        for s in range(0, len(ep) - length + 1, stride):
            yield ep.images[s:s + length], ep.actions[s:s + length], ep.rewards[s:s + length]


@torch.no_grad()
def evaluate_ssm(model: WorldModel, episodes, context: int = 5, horizons=HORIZONS,
                 batch_size: int = 32, device='cpu', seed: int = 0) -> dict:
    """Metrics on ``episodes`` (lists of data.Episode); see module docstring."""
    model = model.to(device).eval()
    horizons = sorted(int(h) for h in horizons)
    length = context + max(horizons)
    wins = list(_windows(episodes, length, stride=max(1, length // 2)))
    if not wins:
        longest = max((len(e) for e in episodes), default=0)
        raise ValueError(f'no window of {length} frames (context {context} + horizon '
                         f'{max(horizons)}); the longest episode has {longest}')
    g = torch.Generator(device=device).manual_seed(seed)
    sums = {'elbo': 0.0, 'recon_se': 0.0, 'reward_se': 0.0}
    ol = {h: 0.0 for h in horizons}
    cl = {h: 0.0 for h in horizons}
    olr = {h: 0.0 for h in horizons}
    clr = {h: 0.0 for h in horizons}
    rewards_all, n_frames, n_win = [], 0, 0
    for i in range(0, len(wins), batch_size):
        chunk = wins[i:i + batch_size]
        images = images_to_tensor(torch.from_numpy(np.stack([w[0] for w in chunk]))).to(device)
        actions = torch.from_numpy(np.stack([w[1] for w in chunk])).to(device)
        rewards = torch.from_numpy(np.stack([w[2] for w in chunk])).to(device)
        B, T = rewards.shape
        sums['elbo'] += float(model.elbo(images, actions, rewards, generator=g)['elbo']) * B
        post = model.observe(images, actions)
        recon = model.decode(post.mean).clamp(0, 1)
        sums['recon_se'] += float(((recon - images) ** 2).mean((2, 3, 4)).sum())
        sums['reward_se'] += float(((model.reward(post.mean) - rewards) ** 2).sum())
        z = model.imagine(post.mean[:, context - 1], actions[:, context:length], sample=False)
        pred = model.decode(z).clamp(0, 1)                                 # (B, Hmax, C, S, S)
        pred_r = model.reward(z)                                           # (B, Hmax)
        last = images[:, context - 1]
        for h in horizons:
            target = images[:, context - 1 + h]
            ol[h] += float(((pred[:, h - 1] - target) ** 2).mean((1, 2, 3)).sum())
            cl[h] += float(((last - target) ** 2).mean((1, 2, 3)).sum())
            r_target = rewards[:, context - 1 + h]
            olr[h] += float(((pred_r[:, h - 1] - r_target) ** 2).sum())
            clr[h] += float(((rewards[:, context - 1] - r_target) ** 2).sum())
        rewards_all.append(rewards.flatten().cpu())
        n_frames += B * T
        n_win += B
    r = torch.cat(rewards_all)
    return {
        'elbo_per_frame': sums['elbo'] / n_win,
        'recon_mse': sums['recon_se'] / n_frames,
        'openloop_mse': {str(h): ol[h] / n_win for h in horizons},
        'copy_last_mse': {str(h): cl[h] / n_win for h in horizons},
        'openloop_ratio': {str(h): ol[h] / max(cl[h], 1e-12) for h in horizons},
        'reward_rmse': float(np.sqrt(sums['reward_se'] / n_frames)),
        'openloop_reward_rmse': {str(h): float(np.sqrt(olr[h] / n_win)) for h in horizons},
        'copy_last_reward_rmse': {str(h): float(np.sqrt(clr[h] / n_win)) for h in horizons},
        'reward_std': float(r.std()),
        'windows': n_win, 'frames': n_frames, 'episodes': len(episodes),
        'context': context, 'window_length': length,
    }


def eval_ssm(ckpt, bags, context: int = 5, horizons=HORIZONS, device='cpu',
             progress: bool = False) -> dict:
    model = WorldModel.from_checkpoint(ckpt, device=device)
    data = (model.checkpoint_extra or {}).get('data')
    cfg = DataConfig.from_dict(data) if data else DataConfig(image_size=model.config.image_size)
    episodes = load_episodes(bags, cfg, progress=progress)
    out = evaluate_ssm(model, episodes, context, horizons, device=device)
    out.update({'checkpoint': str(ckpt), 'bags': [str(b) for b in bags], 'device': str(device)})
    return out
