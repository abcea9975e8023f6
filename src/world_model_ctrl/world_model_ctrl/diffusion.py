"""DDPM image prior: a small UNet, the Gaussian diffusion math, EMA and a checkpointed PriorModel.

Math and notation: /work/shared/theory.md section 3 (docs/theory.md in the repo). Timesteps follow
the paper, t = 1..T; every schedule array is indexed by t and has an entry for t = 0, the clean
image (abar_0 = 1, SNR(0) = inf). ``GaussianDiffusion`` works on pixels in [-1, 1] and takes the
network as ``model(x_t, t) -> prediction`` (of eps or of x_0, per ``target``); ``PriorModel``
owns the UNet and the diffusion and speaks [0, 1] images like the rest of the stack.

Shapes: B batch, C image channels, S image side, D = C*S*S dimensions of one image,
K timesteps evaluated at once, E time-embedding width.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from world_model_ctrl.checkpoint import load_model, save_checkpoint
from world_model_ctrl.configs import from_dict

CHECKPOINT_KIND = 'prior'
# noise levels of ood_score as fractions of T: low levels see texture and colour (noise, blur,
# a colour shift), higher ones layout (extra objects, a changed room)
OOD_LEVELS = (0.02, 0.1, 0.3)

LOSSES = ('simple', 'vlb', 'trunc_snr')

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DiffusionConfig:
    """Hyperparameters of the prior; the resolved dict is stored in every checkpoint."""

    image_size: int = 64          # square frames; divisible by 2 ** (len(channel_mults) - 1)
    channels: int = 3
    base_channels: int = 32       # UNet width at full resolution
    channel_mults: Sequence[int] = (1, 2, 2, 2)   # width multiplier per resolution (halved each)
    num_res_blocks: int = 1       # residual blocks per resolution on the way down
    attention: bool = True        # self-attention at the lowest resolution (8x8 at 64x64)
    dropout: float = 0.0
    timesteps: int = 1000         # T
    schedule: str = 'cosine'      # 'linear' (Ho et al.) or 'cosine' (Nichol & Dhariwal)
    target: str = 'x0'            # what the network predicts: 'x0' or 'eps' (docs/prior.md:
    #                               eps fails at high noise under the cosine schedule)
    loss: str = 'trunc_snr'       # 'trunc_snr' (max(SNR, 1) ||x0 - x0_hat||^2, see loss_terms),
    #                               'simple' (unweighted MSE on the target) or 'vlb' (the bound)
    ema_decay: float = 0.999      # EMA of the weights used for sampling and scoring
    sample_steps: int = 50        # default DDIM steps

    def __post_init__(self):
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f'channel_mults must be positive ints, got {self.channel_mults}')
        div = 2 ** (len(self.channel_mults) - 1)
        if self.image_size < 8 or self.image_size % div:
            raise ValueError(f'image_size must be >= 8 and divisible by {div} (one halving per '
                             f'extra channel_mults entry), got {self.image_size}')
        for name in ('channels', 'base_channels', 'num_res_blocks'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.timesteps < 2:
            raise ValueError(f'timesteps must be >= 2, got {self.timesteps}')
        if self.schedule not in ('linear', 'cosine'):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.target not in ('eps', 'x0'):
            raise ValueError(f"target must be 'eps' or 'x0', got {self.target!r}")
        if self.loss not in LOSSES:
            raise ValueError(f'loss must be one of {LOSSES}, got {self.loss!r}')
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f'sample_steps must be in [1, timesteps], got {self.sample_steps}')

    @classmethod
    def from_dict(cls, d: dict) -> 'DiffusionConfig':
        return from_dict(cls, d, 'DiffusionConfig keys')

    @classmethod
    def from_preset(cls, name: str = 'default', **overrides) -> 'DiffusionConfig':
        if name not in presets:
            raise ValueError(f'unknown prior preset {name!r}; choose from {sorted(presets)}')
        return cls.from_dict({**presets[name], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d['channel_mults'] = list(self.channel_mults)   # what a checkpoint/YAML round trip gives
        return d


# Named overlays on the dataclass defaults. 'debug' is for tests and smoke runs.
presets: dict[str, dict] = {
    'default': {},
    'small': dict(base_channels=16),
    'debug': dict(base_channels=8, channel_mults=(1, 2), timesteps=100, ema_decay=0.9,
                  sample_steps=10),
}


# ---- noise schedules --------------------------------------------------------------------------

def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """1 - alpha_t for t = 1..T, float64 (T,)."""
    if schedule == 'linear':
        # Ho et al.'s 1e-4..0.02 for T = 1000, rescaled so shorter chains end as noisy
        scale = 1000.0 / timesteps
        return torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64)
    if schedule == 'cosine':
        s = 0.008
        u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        # clipped as Nichol & Dhariwal: the last steps would otherwise have alpha_t ~ 0
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}: 'linear' or 'cosine'")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample coefficients -> (B, 1, 1, 1) in x's dtype, to scale x (B, C, S, S)."""
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """Elementwise KL(N(mean1, var1) || N(mean2, var2))."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def discretized_gaussian_loglik(x, mean, log_std) -> torch.Tensor:
    """Elementwise log P(x's 8-bit bin) under N(mean, std^2); x on the 256-level grid in [-1, 1].

    Bins are 2/255 wide; the end bins reach to -inf and +inf (Ho et al. 2020, eq. 13).
    """
    inv = torch.exp(-log_std)
    lower = (x - mean - 1.0 / 255) * inv
    upper = (x - mean + 1.0 / 255) * inv
    # log(Phi(b) - Phi(a)) on the side of the mean where both CDFs are small: no cancellation
    flip = lower > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    mid = lb + torch.log(-torch.expm1((la - lb).clamp(max=-1e-12)))
    return torch.where(x < -0.999, torch.special.log_ndtr(upper),
                       torch.where(x > 0.999, torch.special.log_ndtr(-lower), mid))


class GaussianDiffusion(nn.Module):
    """Forward process q, its posterior, reverse-process losses, samplers, NLL bound, OOD score.

    Schedules are float64 buffers (not in the state_dict: they follow from the config).
    """

    def __init__(self, timesteps: int = 1000, schedule: str = 'cosine', target: str = 'eps',
                 loss: str = 'simple'):
        super().__init__()
        self.T, self.target, self.loss_kind = timesteps, target, loss
        betas = make_betas(schedule, timesteps)
        alphas = torch.cat([torch.ones(1, dtype=torch.float64), 1 - betas])    # (T+1,)
        abar = torch.cumprod(alphas, 0)                                         # abar[0] = 1
        prev = torch.cat([abar[:1], abar[:-1]])                                 # abar_{t-1}
        post_var = (1 - alphas) * (1 - prev) / (1 - abar).clamp(min=1e-300)     # alpha~_t
        post_var[0] = 0.0
        for name, v in (('alphas', alphas), ('abar', abar), ('snr', abar / (1 - abar)),
                        ('post_var', post_var)):
            self.register_buffer(name, v, persistent=False)

    # ---- forward process ----

    def q_sample(self, x0, t, eps) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), reparameterised by eps."""
        ab = self.abar[t.to(self.abar.device)]
        return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * eps

    def q_posterior(self, x0, xt, t, s=None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_s | x_t, x_0) = N(mean, var I) for s < t; s = t - 1 by default (mu~_t, alpha~_t).

        Any s: the ancestral sampler with fewer steps jumps t -> s on the same forward process.
        """
        t = t.to(self.abar.device)
        s = t - 1 if s is None else torch.as_tensor(s, device=t.device).expand_as(t)
        ab_t, ab_s = self.abar[t], self.abar[s]
        a_ts = ab_t / ab_s                                     # alpha_t when s = t - 1
        c_xt = a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
        c_x0 = ab_s.sqrt() * (1 - a_ts) / (1 - ab_t)
        var = (1 - a_ts) * (1 - ab_s) / (1 - ab_t)
        return _bcast(c_xt, xt) * xt + _bcast(c_x0, x0) * x0, _bcast(var, xt)

    # ---- reverse process ----

    def _x0_from(self, out, xt, t) -> torch.Tensor:
        """x0_hat from the network output (the output itself, or x_t minus the noise)."""
        if self.target == 'x0':
            return out
        ab = self.abar[t]
        return (xt - _bcast((1 - ab).sqrt(), xt) * out) / _bcast(ab.sqrt(), xt)

    def predict(self, model: Model, xt, t, clip: bool = False):
        """Network output -> (x0_hat, eps_hat), consistent with each other (after clipping)."""
        t = t.to(self.abar.device)
        ab = self.abar[t]
        out = model(xt, t.to(xt.device)).to(xt.dtype)       # float even under bf16 autocast
        x0 = self._x0_from(out, xt, t)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if self.target == 'eps' and not clip:
            return x0, out
        return x0, (xt - _bcast(ab.sqrt(), xt) * x0) / _bcast((1 - ab).sqrt(), xt)

    def p_mean_variance(self, model: Model, xt, t, s=None, clip: bool = False) -> dict:
        """p_theta(x_s | x_t) = q(x_s | x_t, x0_hat): the posterior form with x_0 predicted.

        Variance alpha~_t (theory.md); it is 0 at t = 1, where the decoder L_0 takes over.
        """
        x0, eps = self.predict(model, xt, t, clip)
        mean, var = self.q_posterior(x0, xt, t, s)
        return {'mean': mean, 'var': var, 'x0': x0, 'eps': eps}

    def decoder_var(self) -> torch.Tensor:
        """Variance of the discretised decoder p(x_0 | x_1): alpha~_2, as Ho et al."""
        return self.post_var[2]

    # ---- objectives ----

    def loss_terms(self, model: Model, x0, t, eps) -> dict:
        """Per-image terms at given t (B,) and noise: 'mse' (the simple objective, mean over D),
        'vlb' (nats): L_{t-1} = 1/2 (SNR(t-1) - SNR(t)) ||x_0 - x0_hat||^2 for t >= 2,
        L_0 = -log p(x_0 | x_1) (discretised) for t = 1, and 'trunc_snr': max(SNR(t), 1)
        ||x_0 - x0_hat||^2 (mean over D), Salimans & Ho 2022's truncated SNR weighting. As
        ||eps - eps_hat||^2 = SNR ||x_0 - x0_hat||^2, it is the eps loss at low noise (sharp
        detail) and the x0 loss at high noise (layout), whatever the network predicts."""
        t = t.to(self.abar.device)
        xt = self.q_sample(x0, t, eps)
        out = model(xt, t.to(x0.device)).to(x0.dtype)
        dims = tuple(range(1, x0.dim()))
        mse = ((out - (eps if self.target == 'eps' else x0)) ** 2).mean(dims)
        x0_hat = self._x0_from(out, xt, t)
        # c_t^2 / (2 alpha~_t) = (SNR(t-1) - SNR(t)) / 2 (theory.md's corrected weight)
        w = 0.5 * (self.snr[(t - 1).clamp(min=1)] - self.snr[t])
        sq = (x0 - x0_hat) ** 2
        kl = w.to(x0.dtype) * sq.sum(dims)
        nll0 = -discretized_gaussian_loglik(
            x0, x0_hat, 0.5 * torch.log(self.decoder_var()).to(x0.dtype)).sum(dims)
        vlb = torch.where(t.to(x0.device) == 1, nll0, kl)
        trunc = self.snr[t].clamp(min=1.0).to(x0.dtype) * sq.mean(dims)
        return {'mse': mse, 'vlb': vlb, 'trunc_snr': trunc}

    def loss(self, model: Model, x0, generator=None) -> dict:
        """Training loss on a batch (t ~ U{1..T}). 'vlb' reports T E_t[L] per dimension (nats),
        an unbiased estimate of the bound without the constant L_T."""
        B, D = x0.shape[0], x0[0].numel()
        t = torch.randint(1, self.T + 1, (B,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        terms = self.loss_terms(model, x0, t, eps)
        vlb = terms['vlb'].mean() * self.T / D
        mse = terms['mse'].mean()
        loss = {'simple': mse, 'vlb': vlb, 'trunc_snr': terms['trunc_snr'].mean()}
        return {'loss': loss[self.loss_kind],
                'mse': mse.detach(), 'vlb': vlb.detach()}

    # ---- samplers ----

    def timesteps_for(self, steps: Optional[int]) -> list[int]:
        """Descending t used by a sampler with ``steps`` steps (None: all T)."""
        if steps is None or steps >= self.T:
            return list(range(self.T, 0, -1))
        if steps < 1:
            raise ValueError(f'steps must be >= 1, got {steps}')
        ts = np.unique(np.round(np.linspace(self.T, 1, steps)).astype(int))   # always from T
        return ts[::-1].tolist()

    @torch.no_grad()
    def sample(self, model: Model, shape, steps: Optional[int] = None, generator=None,
               device='cpu', dtype=torch.float32, clip: bool = True) -> torch.Tensor:
        """Ancestral sampling x_T ~ N(0, I) -> x_0 through p_theta(x_s | x_t); with ``steps`` < T
        it jumps between strided t on the same forward process (respaced DDPM)."""
        ts = self.timesteps_for(steps)
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else 0
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            out = self.p_mean_variance(model, x, tt, s, clip)
            x = out['mean']
            if s > 0:
                z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
                x = x + out['var'].sqrt() * z
        return x

    @torch.no_grad()
    def ddim_sample(self, model: Model, shape, steps: Optional[int] = None, eta: float = 0.0,
                    generator=None, device='cpu', dtype=torch.float32,
                    clip: bool = True) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12); eta = 1 with all T steps is the ancestral sampler."""
        ts = self.timesteps_for(steps)
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else 0
            tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
            x0, eps = self.predict(model, x, tt, clip)
            ab_t, ab_s = float(self.abar[t]), float(self.abar[s])
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
            if s > 0 and sigma > 0:
                x = x + sigma * torch.randn(shape, generator=generator, device=device,
                                            dtype=dtype)
        return x

    # ---- likelihood and OOD score ----

    @torch.no_grad()
    def nll_terms(self, model: Model, x0, steps: Optional[int] = None, generator=None,
                  clip: bool = True, max_batch: int = 256) -> dict:
        """Bound on -log p(x_0) per image in bits/dim: {'prior': L_T, 'diffusion': sum_{t>=2}
        L_{t-1}, 'decoder': L_0, 'total'}, each (B,).

        ``steps`` None: every t exactly. Otherwise t = 2..T is cut into at most ``steps``
        strata, one t drawn per stratum and weighted by its size: unbiased, far cheaper. Strata
        grow geometrically, so the small t, where the SNR weights change fastest and most of the
        bound sits, are evaluated one by one.
        """
        B, D = x0.shape[0], x0[0].numel()
        dims = tuple(range(1, x0.dim()))
        dev = self.abar.device
        ab_T = self.abar[self.T].to(x0.dtype)
        prior = gaussian_kl(ab_T.sqrt() * x0, 1 - ab_T, torch.zeros_like(x0),
                            torch.ones_like(x0)).sum(dims)                            # (B,)
        if steps is None or steps >= self.T - 1:
            ts = torch.arange(2, self.T + 1, device=dev)
            weights = torch.ones(len(ts), dtype=torch.float64, device=dev)
        else:
            edges = torch.from_numpy(np.round(np.geomspace(2, self.T + 1, steps + 1))
                                     .astype(np.int64)).unique()
            lo, size = edges[:-1], edges[1:] - edges[:-1]                # strata [lo, lo+size)
            u = torch.rand(len(lo), generator=generator, dtype=torch.float64)
            ts = (lo + (u * size).long().clamp(max=size - 1)).to(dev)
            weights = size.to(torch.float64).to(dev)
        diffusion = torch.zeros(B, dtype=x0.dtype, device=x0.device)
        per = max(1, max_batch // B)                                     # timesteps per pass
        for k in range(0, len(ts), per):
            t = ts[k:k + per].repeat_interleave(B)                       # (K*B,)
            x = x0.repeat(len(t) // B, *([1] * (x0.dim() - 1)))          # (K*B, C, S, S)
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            xt = self.q_sample(x, t, eps)
            x0_hat, _ = self.predict(model, xt, t, clip)
            w = 0.5 * (self.snr[t - 1] - self.snr[t]) * weights[k:k + per].repeat_interleave(B)
            terms = w.to(x.dtype) * ((x - x0_hat) ** 2).sum(dims)        # (K*B,)
            diffusion += terms.view(-1, B).sum(0)
        t1 = torch.ones(B, dtype=torch.long, device=dev)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x0_hat, _ = self.predict(model, self.q_sample(x0, t1, eps), t1, clip)
        log_std = 0.5 * torch.log(self.decoder_var()).to(x0.dtype)
        decoder = -discretized_gaussian_loglik(x0, x0_hat, log_std).sum(dims)
        to_bits = 1.0 / (D * math.log(2))
        out = {'prior': prior * to_bits, 'diffusion': diffusion * to_bits,
               'decoder': decoder * to_bits}
        out['total'] = out['prior'] + out['diffusion'] + out['decoder']
        return out

    def nll_bits_per_dim(self, model: Model, x0, steps: Optional[int] = None, generator=None,
                         clip: bool = True) -> torch.Tensor:
        """L_T + sum_{t>=2} L_{t-1} + L_0 in bits per dimension, per image (B,)."""
        return self.nll_terms(model, x0, steps, generator, clip)['total']

    def default_ood_levels(self) -> list[int]:
        return [max(1, round(f * self.T)) for f in OOD_LEVELS]

    @torch.no_grad()
    def ood_score(self, model: Model, x0, t_levels: Optional[Sequence[int]] = None,
                  n_noise: int = 1, seed: int = 0) -> torch.Tensor:
        """x_0-reconstruction error from a few fixed noise levels in one batched pass: (B,).

        Each level's mean squared error is weighted by SNR(t), i.e. measured against that
        level's noise (it is then the eps-prediction error): unweighted, the noisiest level
        would drown the others. The noise is a fixed draw shared by every frame, so a frame's
        score does not depend on the batch it came in. Higher = less like the training frames.
        """
        levels = list(t_levels) if t_levels is not None else self.default_ood_levels()
        if not levels or min(levels) < 1 or max(levels) > self.T or n_noise < 1:
            raise ValueError(f'need t_levels in [1, {self.T}] and n_noise >= 1, got '
                             f'{levels}, {n_noise}')
        B, K = x0.shape[0], len(levels) * n_noise
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((K, *x0.shape[1:]), generator=g, dtype=x0.dtype).to(x0.device)
        t = torch.tensor(levels, device=self.abar.device).repeat_interleave(n_noise)  # (K,)
        x = x0.repeat_interleave(K, 0)                                    # (B*K, C, S, S)
        tt = t.repeat(B)
        xt = self.q_sample(x, tt, eps.repeat(B, *([1] * (x0.dim() - 1))))
        x0_hat, _ = self.predict(model, xt, tt, clip=True)
        err = ((x0_hat - x) ** 2).mean(tuple(range(1, x0.dim())))        # (B*K,)
        return (err * self.snr[tt].to(err.dtype)).view(B, K).mean(1)


# ---- UNet ---------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps as in the Transformer: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                             # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], -1)            # (B, dim)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class ResBlock(nn.Module):
    """Two 3x3 convs with the time embedding added between them; starts as the identity."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        # zero last conv: every block is the identity at init, so depth does not hurt early steps
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):                                 # (B, Cin, H, W), (B, E)
        h = self.conv1(F.silu(self.norm1(x)))                  # (B, Cout, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of one (low) resolution, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.heads = max(1, c // 32)
        self.norm, self.qkv = _norm(c), nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, emb=None):                            # (B, C, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)              # (B, nh, HW, C/nh) each
        h = F.scaled_dot_product_attention(q, k, v)            # (B, nh, HW, C/nh)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class _Identity(nn.Module):
    def forward(self, x, emb=None):
        return x


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)                                    # (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))   # (B, C, 2H, 2W)


class UNet(nn.Module):
    """DDPM-style UNet (Ho et al. 2020): every down block's output is a skip into the up path."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        c0, emb = cfg.base_channels, 4 * cfg.base_channels
        self.c0 = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(cfg.channels, c0, 3, padding=1)
        widths = [c0 * m for m in cfg.channel_mults]
        self.down, skips, c = nn.ModuleList(), [c0], c0
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(c, w, emb, cfg.dropout))
                c = w
                skips.append(c)
            if i < len(widths) - 1:
                self.down.append(Downsample(c))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb, cfg.dropout),
                                  Attention(c) if cfg.attention else _Identity(),
                                  ResBlock(c, c, emb, cfg.dropout)])
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), w, emb, cfg.dropout))
                c = w
            if i > 0:
                self.up.append(Upsample(c))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t):                                   # (B, C, S, S) in [-1, 1], (B,)
        emb = self.time_mlp(timestep_embedding(t, self.c0).to(x.dtype))      # (B, E)
        h = self.inp(x)                                        # (B, c0, S, S)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], 1), emb) if isinstance(block, ResBlock) \
                else block(h, emb)
        return self.out(h)                                     # (B, C, S, S)


# ---- EMA, the prior as one module, checkpoints ------------------------------------------------

class EMA:
    """Exponential moving average of a model's weights, kept in a frozen copy of the model.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over n updates, so short runs are not
    dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = [p for p in self.model.parameters()]
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def images_to_model(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1], the space the diffusion runs in."""
    return images * 2.0 - 1.0


def model_to_images(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def calibrate_threshold(scores, quantile: float = 0.99) -> float:
    """OOD threshold: the ``quantile`` of scores of held-out in-distribution frames."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError('calibrate_threshold needs a non-empty array of finite scores')
    if not 0.0 < quantile < 1.0:
        raise ValueError(f'quantile must be in (0, 1), got {quantile}')
    return float(np.quantile(scores, quantile))


class PriorModel(nn.Module):
    """The DDPM image prior: a UNet and its diffusion. Images in/out: (B, C, S, S) in [0, 1].

    forward(x_t, t) is the raw network (x_t in [-1, 1]); everything else goes through the
    diffusion: loss, sample (ancestral), ddim_sample, nll_bits_per_dim, ood_score.
    """

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = cfg = config
        self.net = UNet(cfg)
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.schedule, cfg.target, cfg.loss)
        self.checkpoint_extra: dict = {}

    def forward(self, xt, t) -> torch.Tensor:
        return self.net(xt, t)

    def _check_images(self, images: torch.Tensor):
        c, s = self.config.channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f'expected images of shape (B, {c}, {s}, {s}) float in [0, 1], '
                             f'got {tuple(images.shape)}')

    def _ref(self) -> torch.Tensor:
        return next(self.parameters())

    def loss(self, images, generator=None) -> dict:
        """{'loss', 'mse', 'vlb'} on a batch of frames (see GaussianDiffusion.loss)."""
        self._check_images(images)
        return self.diffusion.loss(self.net, images_to_model(images), generator)

    def _shape(self, n: int) -> tuple:
        s = self.config.image_size
        return (n, self.config.channels, s, s)

    @torch.no_grad()
    def sample(self, n: int, steps: Optional[int] = None, generator=None) -> torch.Tensor:
        """Ancestral samples (all T steps unless ``steps``): (n, C, S, S) in [0, 1]."""
        ref = self._ref()
        x = self.diffusion.sample(self.net, self._shape(n), steps, generator, ref.device,
                                  ref.dtype)
        return model_to_images(x)

    @torch.no_grad()
    def ddim_sample(self, n: int, steps: Optional[int] = None, eta: float = 0.0,
                    generator=None) -> torch.Tensor:
        """DDIM samples with ``steps`` (default config.sample_steps): (n, C, S, S) in [0, 1]."""
        ref = self._ref()
        steps = self.config.sample_steps if steps is None else steps
        x = self.diffusion.ddim_sample(self.net, self._shape(n), steps, eta, generator,
                                       ref.device, ref.dtype)
        return model_to_images(x)

    @torch.no_grad()
    def nll_terms(self, images, steps: Optional[int] = None, generator=None) -> dict:
        self._check_images(images)
        return self.diffusion.nll_terms(self.net, images_to_model(images), steps, generator)

    def nll_bits_per_dim(self, images, steps: Optional[int] = None,
                         generator=None) -> torch.Tensor:
        """Negative log-likelihood bound per image, bits/dim (B,); steps=None: every t."""
        return self.nll_terms(images, steps, generator)['total']

    @torch.no_grad()
    def ood_score(self, images, t_levels: Optional[Sequence[int]] = None,
                  n_noise: Optional[int] = None, seed: Optional[int] = None) -> torch.Tensor:
        """Per-frame unusualness (B,); settings default to those the threshold was fit with."""
        self._check_images(images)
        ood = self.checkpoint_extra.get('ood') or {}
        return self.diffusion.ood_score(
            self.net, images_to_model(images),
            ood.get('t_levels') if t_levels is None else t_levels,
            ood.get('n_noise', 1) if n_noise is None else n_noise,
            ood.get('seed', 0) if seed is None else seed)

    @property
    def ood_threshold(self) -> Optional[float]:
        """Threshold calibrated on held-out frames (None until training/eval stored one)."""
        return (self.checkpoint_extra.get('ood') or {}).get('threshold')

    # ---- checkpoints ----

    def save(self, path, extra: Optional[dict] = None) -> None:
        """Write this model's weights (the EMA copy, when training) + config + extra."""
        save_checkpoint(path, CHECKPOINT_KIND, self.config.to_dict(), self.state_dict(), extra)

    @classmethod
    def from_checkpoint(cls, path, device='cpu') -> 'PriorModel':
        return load_model(cls, DiffusionConfig, path, CHECKPOINT_KIND, 'prior', device)


__all__ = ['DiffusionConfig', 'presets', 'GaussianDiffusion', 'UNet', 'PriorModel', 'EMA',
           'make_betas', 'gaussian_kl', 'discretized_gaussian_loglik', 'timestep_embedding',
           'calibrate_threshold', 'images_to_model', 'model_to_images',
           'CHECKPOINT_KIND', 'OOD_LEVELS', 'LOSSES']
