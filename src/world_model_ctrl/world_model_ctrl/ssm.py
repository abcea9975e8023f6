"""Sequential VAE world model: a filtering GRU posterior, a Gaussian transition prior, decoders.

Math and notation: /work/shared/theory.md section 1 (docs/theory.md in the repo). Generative model
p(z_1) prod_t p(z_t | z_{t-1}, a_{t-1}) prod_t p(x_t | z_t) p(r_t | z_t); inference network
q(z_t | x_{1:t}, a_{1:t-1}) from a GRU that never sees a sampled z, so q factorises into
per-step Gaussians and the same network filters the live camera stream (the belief node).

Shapes: B batch, T time, C image channels, S image side, A action dim, Z latent dim,
G inference-GRU hidden size, N imagined trajectories, H planning horizon.
Action convention: prev_actions[:, t] is a_{t-1}, the command in effect when frame t was taken
(zeros at an episode start).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from world_model_ctrl.configs import from_dict
from world_model_ctrl.checkpoint import load_model, save_checkpoint

CHECKPOINT_KIND = 'ssm'
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class SSMConfig:
    """Hyperparameters of the world model; the resolved dict is stored in every checkpoint."""

    image_size: int = 64          # square frames, a power of two >= 16
    channels: int = 3
    action_dim: int = 2
    cnn_depth: int = 32           # channels of the first conv layer, doubled per layer
    embed_dim: int = 256          # image embedding fed to the inference GRU
    gru_hidden: int = 256         # inference GRU state (the filter's memory)
    latent_dim: int = 32          # z
    hidden: int = 256             # MLP width (posterior head, transition, reward head)
    min_std: float = 0.1          # floor on every latent std: keeps KLs and samples well posed
    obs_std: float = 0.1          # fixed pixel std of p(x|z); pixels are in [0, 1]
    reward_std: float = 0.05      # sigma_r of p(r|z)
    free_nats: float = 1.0        # KL below this (per step, summed over z) is not penalised
    kl_balance: float = 0.8       # DreamerV2 alpha; 0.5 = plain KL
    reward_scale: float = 10.0    # weight of the reward log-lik in the loss (not in the ELBO)
    action_scale: float = 0.5     # actions are divided by this before entering any network
    deterministic_prior: bool = False   # gated (GRU-cell) transition instead of a plain MLP
    # Overshooting (PlaNet section 4, for what CEM scores): from every posterior sample, roll
    # the prior's mean path D steps under the recorded actions and score r(z_{t+d}) against the
    # recorded reward (weight overshoot_scale, like reward_scale) and KL(sg q(z_{t+d}) || p_d).
    overshoot: int = 0            # D; 0 = the filtering ELBO alone
    overshoot_scale: float = 1.0  # weight of the overshooting terms, per step d

    def __post_init__(self):
        s = self.image_size
        if s < 16 or s & (s - 1):
            raise ValueError(f'image_size must be a power of two >= 16, got {s}')
        for name in ('channels', 'action_dim', 'cnn_depth', 'embed_dim', 'gru_hidden',
                     'latent_dim', 'hidden'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('min_std', 'obs_std', 'reward_std', 'action_scale'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.free_nats < 0:
            raise ValueError(f'free_nats must be >= 0, got {self.free_nats}')
        if not 0.0 <= self.kl_balance <= 1.0:
            raise ValueError(f'kl_balance must be in [0, 1], got {self.kl_balance}')
        if self.reward_scale < 0:
            raise ValueError(f'reward_scale must be >= 0, got {self.reward_scale}')
        if int(self.overshoot) < 0 or self.overshoot_scale < 0:
            raise ValueError(f'overshoot and overshoot_scale must be >= 0, got '
                             f'{self.overshoot} and {self.overshoot_scale}')

    @classmethod
    def from_dict(cls, d: dict) -> 'SSMConfig':
        return from_dict(cls, d, 'SSMConfig keys')

    @classmethod
    def from_preset(cls, name: str = 'default', **overrides) -> 'SSMConfig':
        if name not in presets:
            raise ValueError(f'unknown SSM preset {name!r}; choose from {sorted(presets)}')
        return cls.from_dict({**presets[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# Fields that weigh the training loss only: a fine-tune (train-ssm --resume) may change them.
LOSS_KEYS = ('obs_std', 'reward_std', 'free_nats', 'kl_balance', 'reward_scale', 'overshoot',
             'overshoot_scale')


# Named overlays on the dataclass defaults (DreamerV3-style). 'debug' is for tests and smoke runs.
presets: dict[str, dict] = {
    'default': {},
    'debug': dict(cnn_depth=8, embed_dim=64, gru_hidden=64, latent_dim=8, hidden=64,
                  free_nats=0.0, kl_balance=0.5, reward_scale=1.0),
}


class Posterior(NamedTuple):
    mean: torch.Tensor   # (B, T, Z)
    std: torch.Tensor    # (B, T, Z)
    h: torch.Tensor      # (B, T, G) inference-GRU state after each frame


def gaussian_kl(mean1, std1, mean2, std2) -> torch.Tensor:
    """KL(N(mean1, std1^2) || N(mean2, std2^2)) of diagonal Gaussians, summed over the last dim."""
    var_ratio = (std1 / std2) ** 2
    mahal = ((mean1 - mean2) / std2) ** 2
    return 0.5 * (var_ratio + mahal - 1.0 - torch.log(var_ratio)).sum(-1)


def gaussian_loglik(x, mean, std) -> torch.Tensor:
    """Elementwise log N(x | mean, std^2), constants included so sums are honest nats."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * _LOG_2PI


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (..., H, W, C) array or tensor -> float32 (..., C, H, W) in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f'images must be uint8 (..., H, W, C), got '
                        f'{getattr(images, "dtype", type(images))}')
    if images.dim() < 3:
        raise ValueError(f'images must have shape (..., H, W, C), got {tuple(images.shape)}')
    return images.movedim(-1, -3).float().div_(255.0)


def _mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    mods, width = [], inp
    for _ in range(layers):
        # LayerNorm before the activation (as DreamerV3): stable scales, fewer stalled units
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, out))


def _std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    # softplus keeps the std smooth and positive; the floor stops the KL from exploding
    return F.softplus(raw) + min_std


class Encoder(nn.Module):
    """Strided convs halve the side down to 4x4, then a linear map to the embedding."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        n = int(math.log2(cfg.image_size)) - 2
        chans = [cfg.channels] + [cfg.cnn_depth * 2 ** i for i in range(n)]
        convs = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
        self.convs = nn.Sequential(*convs)
        self.fc = nn.Linear(chans[-1] * 16, cfg.embed_dim)
        # keeps the GRU input O(1) whatever the image statistics: saturated gates stall learning
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x):                        # (N, C, S, S) in [0, 1]
        h = self.convs(x - 0.5)                  # (N, D, 4, 4); centred input trains faster
        return self.norm(self.fc(h.flatten(1)))  # (N, E)


class Decoder(nn.Module):
    """Mirror of the encoder: linear to 4x4, transposed convs double the side up to S."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        n = int(math.log2(cfg.image_size)) - 2
        chans = [cfg.cnn_depth * 2 ** i for i in reversed(range(n))] + [cfg.channels]
        self.top = chans[0]
        self.fc = nn.Linear(cfg.latent_dim, self.top * 16)
        self.norm = nn.LayerNorm(self.top * 16)
        layers = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            if i < n - 1:
                layers.append(nn.SiLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z):                        # (N, Z)
        h = F.silu(self.norm(self.fc(z))).view(-1, self.top, 4, 4)
        return self.deconvs(h) + 0.5             # (N, C, S, S) pixel means; 0.5 = grey at init


class Transition(nn.Module):
    """p(z_t | z_{t-1}, a_{t-1}): Gaussian, mean as a residual on z_{t-1} (slow scenes)."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.cfg = cfg
        z, a, h = cfg.latent_dim, cfg.action_dim, cfg.hidden
        if cfg.deterministic_prior:
            # RSSM-like gated deterministic path. Its hidden state is rebuilt from z_{t-1} every
            # step, so the prior stays Markov in z: the ELBO of theory.md holds unchanged and the
            # planner needs nothing but z to imagine.
            self.h0 = nn.Linear(z, h)
            self.cell = nn.GRUCell(z + a, h)
            self.head = _mlp(h, h, 2 * z, layers=1)
        else:
            self.net = _mlp(z + a, h, 2 * z)

    def forward(self, z, a):                     # (..., Z), (..., A) already scaled
        za = torch.cat([z, a], -1)
        if self.cfg.deterministic_prior:
            lead = za.shape[:-1]
            h0 = torch.tanh(self.h0(z.reshape(-1, z.shape[-1])))
            d = self.cell(za.reshape(-1, za.shape[-1]), h0)
            out = self.head(d).view(*lead, -1)
        else:
            out = self.net(za)
        delta, raw = out.chunk(2, -1)
        return z + delta, _std(raw, self.cfg.min_std)   # (..., Z) each


class WorldModel(nn.Module):
    """Sequential VAE: observe (filter), step (one live update), imagine (roll the prior), elbo."""

    def __init__(self, config: SSMConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.gru = nn.GRU(cfg.embed_dim + cfg.action_dim, cfg.gru_hidden, batch_first=True)
        self.post_head = _mlp(cfg.gru_hidden, cfg.hidden, 2 * cfg.latent_dim, layers=1)
        self.transition = Transition(cfg)
        self.reward_head = _mlp(cfg.latent_dim, cfg.hidden, 1)

    # ---- inference q(z_t | x_{1:t}, a_{1:t-1}) ----

    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.config.gru_hidden, device=device)   # (B, G)

    def _check_images(self, images: torch.Tensor, lead: int):
        c, s = self.config.channels, self.config.image_size
        if images.dim() != lead + 3 or tuple(images.shape[-3:]) != (c, s, s):
            raise ValueError(f'expected images of shape ({"B, T, " if lead == 2 else "B, "}'
                             f'{c}, {s}, {s}) float in [0, 1], got {tuple(images.shape)}')

    def observe(self, images, prev_actions, h0=None) -> Posterior:
        """Filter a sequence: q(z_t | x_{1:t}, a_{1:t-1}) for every t."""
        self._check_images(images, 2)
        B, T = images.shape[:2]
        if tuple(prev_actions.shape) != (B, T, self.config.action_dim):
            raise ValueError(f'prev_actions must be (B, T, A) = {(B, T, self.config.action_dim)}, '
                             f'got {tuple(prev_actions.shape)}')
        e = self.encoder(images.flatten(0, 1)).view(B, T, -1)               # (B, T, E)
        inp = torch.cat([e, prev_actions / self.config.action_scale], -1)   # (B, T, E+A)
        if h0 is None:
            h0 = self.initial_state(B, images.device)
        h, _ = self.gru(inp, h0.unsqueeze(0).contiguous())                  # (B, T, G)
        mean, std = self._posterior(h)
        return Posterior(mean, std, h)

    def step(self, h, image, prev_action):
        """One filtering update for a live stream; observe() is exactly this, repeated."""
        self._check_images(image, 1)
        want = (image.shape[0], self.config.action_dim)
        if tuple(prev_action.shape) != want:
            raise ValueError(f'prev_action must be (B, A) = {want}, '
                             f'got {tuple(prev_action.shape)}')
        if h is None:
            h = self.initial_state(image.shape[0], image.device)
        e = self.encoder(image)                                             # (B, E)
        inp = torch.cat([e, prev_action / self.config.action_scale], -1)    # (B, E+A)
        out, _ = self.gru(inp.unsqueeze(1), h.unsqueeze(0).contiguous())    # (B, 1, G)
        h_new = out[:, 0]
        mean, std = self._posterior(h_new)
        return h_new, mean, std                                             # (B, G), (B, Z) x2

    def _posterior(self, h):
        mean, raw = self.post_head(h).chunk(2, -1)
        return mean, _std(raw, self.config.min_std)

    # ---- generative model ----

    def prior_first(self, like: torch.Tensor):
        """p(z_1) = N(0, I), broadcast to the shape of ``like``."""
        return torch.zeros_like(like), torch.ones_like(like)

    def prior(self, z_prev, prev_action):
        """p(z_t | z_{t-1}, a_{t-1}) -> (mean, std), any leading shape."""
        return self.transition(z_prev, prev_action / self.config.action_scale)

    def decode(self, z) -> torch.Tensor:
        """Pixel means of p(x | z): (..., Z) -> (..., C, S, S)."""
        lead = z.shape[:-1]
        x = self.decoder(z.reshape(-1, z.shape[-1]))
        return x.view(*lead, *x.shape[1:])

    def reward(self, z) -> torch.Tensor:
        """Mean of p(r | z): (..., Z) -> (...)."""
        return self.reward_head(z).squeeze(-1)

    def imagine(self, z0, actions, sample: bool = True, generator=None) -> torch.Tensor:
        """Roll the prior from z0 (N, Z) under actions (N, H, A): z_{1..H} as (N, H, Z)."""
        if z0.dim() != 2 or actions.dim() != 3 or actions.shape[0] != z0.shape[0]:
            raise ValueError(f'imagine wants z0 (N, Z) and actions (N, H, A), got '
                             f'{tuple(z0.shape)} and {tuple(actions.shape)}')
        a = actions / self.config.action_scale
        z, out = z0, []
        for k in range(actions.shape[1]):           # one batched MLP call per horizon step
            mean, std = self.transition(z, a[:, k])
            if sample:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device,
                                  dtype=mean.dtype)
                z = mean + std * eps
            else:
                z = mean
            out.append(z)
        return torch.stack(out, 1)                  # (N, H, Z)

    def imagine_rewards(self, z0, actions, sample: bool = True, generator=None) -> torch.Tensor:
        """Predicted rewards r(z_{1..H}) along imagined rollouts: (N, H). What CEM scores."""
        return self.reward(self.imagine(z0, actions, sample=sample, generator=generator))

    # ---- objective ----

    def elbo(self, images, prev_actions, rewards, generator=None) -> dict:
        """Filtering ELBO (theory.md) per frame, and the training loss derived from it.

        'elbo', 'recon_loglik', 'reward_loglik', 'kl', 'kl_first' are honest per-frame nats
        (batch-mean, divided by T); 'loss' applies free nats, KL balancing and reward_scale.
        """
        cfg = self.config
        B, T = images.shape[:2]
        if tuple(rewards.shape) != (B, T):
            raise ValueError(f'rewards must be (B, T) = {(B, T)}, got {tuple(rewards.shape)}')
        post = self.observe(images, prev_actions)
        eps = torch.randn(post.mean.shape, generator=generator, device=post.mean.device,
                          dtype=post.mean.dtype)
        # q factorises over t, so one draw per step is a joint sample of z_{1:T}
        z = post.mean + post.std * eps                                        # (B, T, Z)

        recon = gaussian_loglik(images, self.decode(z), cfg.obs_std).sum((-3, -2, -1))  # (B, T)
        rew = gaussian_loglik(rewards, self.reward(z), cfg.reward_std)                   # (B, T)

        m0, s0 = self.prior_first(post.mean[:, 0])
        kl_first = gaussian_kl(post.mean[:, 0], post.std[:, 0], m0, s0)                  # (B,)
        # KL(q(z_t) || p(z_t | z_{t-1}, a_{t-1})) for t >= 2, z_{t-1} a reparameterised sample
        pm, ps = self.prior(z[:, :-1], prev_actions[:, 1:])                     # (B, T-1, Z)
        qm, qs = post.mean[:, 1:], post.std[:, 1:]
        kl_rest = gaussian_kl(qm, qs, pm, ps)                                            # (B, T-1)

        kl_sum = kl_first + kl_rest.sum(1)                                               # (B,)
        elbo = (recon.sum(1) + rew.sum(1) - kl_sum) / T

        # DreamerV2 balancing: alpha of the gradient trains the prior towards q, (1 - alpha)
        # pulls q towards the prior. Both terms have the KL's value; 2 * bal - sg(bal) keeps that
        # value and doubles the gradient, so alpha = 0.5 is exactly the plain KL.
        fn, al = cfg.free_nats, cfg.kl_balance
        kl_prior = gaussian_kl(qm.detach(), qs.detach(), pm, ps).clamp(min=fn)
        kl_post = gaussian_kl(qm, qs, pm.detach(), ps.detach()).clamp(min=fn)
        bal = al * kl_prior + (1 - al) * kl_post                                        # (B, T-1)
        kl_loss = (2 * bal - bal.detach()).sum(1)
        kl_loss = kl_loss + kl_first.clamp(min=fn)      # fixed N(0, I): nothing to balance
        loss = -(recon.sum(1) + cfg.reward_scale * rew.sum(1) - kl_loss) / T
        over = self._overshoot(z, post, prev_actions, rewards)

        return {
            'loss': loss.mean() + cfg.overshoot_scale * over['loss'],
            **{k: v for k, v in over.items() if k != 'loss'},
            'elbo': elbo.mean().detach(),
            'recon_loglik': (recon.sum(1) / T).mean().detach(),
            'reward_loglik': (rew.sum(1) / T).mean().detach(),
            'kl': (kl_sum / T).mean().detach(),
            'kl_first': kl_first.mean().detach(),
        }

    def _overshoot(self, z, post: Posterior, prev_actions, rewards) -> dict:
        """Overshooting terms of the loss, averaged over start times t and distances d.

        What the planner does with the model, trained directly: from z_t (the posterior sample)
        the prior's mean path under a_t..a_{t+d-1} gives z_{t+d}; its reward must match the
        recorded r_{t+d} (weighted like reward_scale) and its prior must cover q(z_{t+d})
        (KL to a stopped-gradient posterior, free nats as in the ELBO). Without it, only
        one-step predictions are trained, and the mean path may drift towards states the reward
        head rates well: CEM then prefers plans that do nothing.
        """
        cfg, T = self.config, z.shape[1]
        D = min(int(cfg.overshoot), T - 1)
        zero = z.new_zeros(())
        if D < 1:
            return {'loss': zero}
        m = z[:, :-1]                                             # (B, T-1, Z): starts t
        rew_terms, kl_terms = [], []
        for d in range(1, D + 1):
            # a start at t reaches t+d; starts t > T-1-d have no target and are dropped
            m, s = self.prior(m[:, :T - d], prev_actions[:, d:])
            r = gaussian_loglik(rewards[:, d:], self.reward(m), cfg.reward_std)  # (B, T-d)
            kl = gaussian_kl(post.mean[:, d:].detach(), post.std[:, d:].detach(), m, s)
            rew_terms.append(r.mean())
            kl_terms.append(kl.clamp(min=cfg.free_nats).mean())
        rew_ll = torch.stack(rew_terms).mean()
        kl = torch.stack(kl_terms).mean()
        return {'loss': -(cfg.reward_scale * rew_ll - kl),
                'overshoot_reward_loglik': rew_ll.detach(), 'overshoot_kl': kl.detach()}

    @torch.no_grad()
    def openloop(self, images, prev_actions, context: int, horizon: int) -> torch.Tensor:
        """Filter frames [0, context), then predict frames [context, context+horizon) open loop.

        Uses the posterior mean of the last context frame, the mean path of the prior under the
        recorded actions, and returns decoded means clamped to [0, 1]: (B, horizon, C, S, S).
        """
        T = images.shape[1]
        if context < 1 or horizon < 1 or context + horizon > T:
            raise ValueError(f'need 1 <= context, 1 <= horizon, context + horizon <= T={T}; '
                             f'got context={context}, horizon={horizon}')
        post = self.observe(images[:, :context], prev_actions[:, :context])
        # frame context+k was taken under a_{context+k-1} = prev_actions[:, context+k]
        z = self.imagine(post.mean[:, -1], prev_actions[:, context:context + horizon],
                         sample=False)
        return self.decode(z).clamp(0.0, 1.0)

    # ---- checkpoints ----

    def save(self, path, extra: Optional[dict] = None) -> None:
        save_checkpoint(path, CHECKPOINT_KIND, self.config.to_dict(), self.state_dict(), extra)

    @classmethod
    def from_checkpoint(cls, path, device='cpu') -> 'WorldModel':
        return load_model(cls, SSMConfig, path, CHECKPOINT_KIND, 'SSM', device)


__all__ = ['SSMConfig', 'presets', 'Posterior', 'WorldModel', 'gaussian_kl', 'gaussian_loglik',
           'images_to_tensor', 'CHECKPOINT_KIND']
