"""DDPM prior math (theory.md section 3) against direct computations, learning, checkpoints."""
import math

import numpy as np
import pytest
import torch

from room_sim.world import RoomWorld, WorldConfig
from world_model_ctrl.checkpoint import load_checkpoint, save_checkpoint
from world_model_ctrl.diffusion import (EMA, DiffusionConfig, GaussianDiffusion, PriorModel,
                                        ResBlock, calibrate_threshold, gaussian_kl)
from world_model_ctrl.ssm import images_to_tensor


def random_prior(size=8, **kw) -> PriorModel:
    """A debug UNet in float64 whose zero-initialised layers are randomised: a non-trivial net."""
    torch.manual_seed(0)
    m = PriorModel(DiffusionConfig.from_preset('debug', image_size=size, **kw)).double()
    for mod in m.net.modules():
        if isinstance(mod, ResBlock):
            torch.nn.init.normal_(mod.conv2.weight, std=0.1)
    torch.nn.init.normal_(m.net.out[-1].weight, std=0.3)
    return m


def numpy_abar(schedule: str, T: int) -> np.ndarray:
    """abar_0..abar_T written out independently of the module."""
    if schedule == 'linear':
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    else:
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
@pytest.mark.parametrize('target', ['eps', 'x0'])
def test_weighted_x0_loss_is_the_gaussian_kl(schedule, target):
    """L_{t-1} = 1/2 (SNR(t-1) - SNR(t)) ||x0 - x0_hat||^2 equals KL(q(x_{t-1}|x_t,x_0) ||
    p(x_{t-1}|x_t)) computed from the two Gaussians (the weight is c_t^2 / (2 alpha~_t))."""
    m = random_prior(schedule=schedule, target=target)
    d, T = m.diffusion, m.config.timesteps
    abar = numpy_abar(schedule, T)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    for tv in (2, 3, 10, T // 2, T):
        t = torch.full((3,), tv)
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        weighted = d.loss_terms(m.net, x0, t, eps)['vlb']                      # (B,)
        xt = d.q_sample(x0, t, eps)
        p = d.p_mean_variance(m.net, xt, t)
        # q's posterior from theory.md, written out with numpy's abar
        a_t, ab_t, ab_p = abar[tv] / abar[tv - 1], abar[tv], abar[tv - 1]
        mu_q = (math.sqrt(a_t) * (1 - ab_p) / (1 - ab_t) * xt
                + math.sqrt(ab_p) * (1 - a_t) / (1 - ab_t) * x0)
        var_q = torch.tensor((1 - a_t) * (1 - ab_p) / (1 - ab_t), dtype=torch.float64)
        kl = gaussian_kl(mu_q, var_q, p['mean'], p['var']).sum((1, 2, 3))
        weighted, kl = weighted.detach(), kl.detach()
        assert float(kl.min()) > 0
        torch.testing.assert_close(weighted, kl, rtol=1e-6, atol=0)
        # and c_t alone (the mission text's slip) would not be the KL
        c_t = math.sqrt(ab_p) * (1 - a_t) / (1 - ab_t)
        sq = ((x0 - p['x0']) ** 2).sum((1, 2, 3))
        assert not torch.allclose(c_t / (2 * var_q) * sq, kl, rtol=1e-3)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_q_sample_matches_iterating_the_forward_process(schedule):
    d = GaussianDiffusion(200, schedule)
    abar = numpy_abar(schedule, 200)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64).expand(n, 4)
    x = x0.clone()
    checks = {1: None, 5: None, 50: None, 200: None}
    for t in range(1, 201):
        a = float(d.alphas[t])
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = math.sqrt(a) * x + math.sqrt(1 - a) * noise
        if t in checks:
            checks[t] = x.clone()
    for t, xi in checks.items():
        xq = d.q_sample(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g,
                                                             dtype=torch.float64))
        mean, std = math.sqrt(abar[t]) * x0[0], math.sqrt(1 - abar[t])
        se = std / math.sqrt(n)
        for sample in (xi, xq):                     # both agree with the closed form
            assert (sample.mean(0) - mean).abs().max() < 5 * se, (t, sample.mean(0), mean)
            assert (sample.std(0) / std - 1).abs().max() < 0.03, (t, sample.std(0), std)


def test_tiny_model_loss_falls_on_rendered_frames():
    torch.manual_seed(0)
    world = RoomWorld(WorldConfig(image_size=16, random_goal=True), seed=0)
    frames = images_to_tensor(np.stack([world.reset() for _ in range(64)]))   # (64, 3, 16, 16)
    m = PriorModel(DiffusionConfig.from_preset('debug', image_size=16))
    g = torch.Generator().manual_seed(1)
    t = torch.randint(1, m.config.timesteps + 1, (64,), generator=g)
    eps = torch.randn(frames.shape, generator=g)

    def fixed_loss():
        with torch.no_grad():
            return float(m.diffusion.loss_terms(m.net, frames * 2 - 1, t, eps)['mse'].mean())

    before = fixed_loss()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        batch = frames[torch.randint(0, 64, (16,))]
        loss = m.loss(batch)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize('steps', [None, 7])
def test_ddim_with_eta_1_is_the_ancestral_sampler(steps):
    """Same noise stream: DDIM (eta = 1) over all T steps, or a strided set, equals ancestral
    sampling through p_theta's posterior mean and variance."""
    m = random_prior()
    d, T = m.diffusion, m.config.timesteps
    shape = (2, 3, 8, 8)
    anc = d.sample(m.net, shape, steps, torch.Generator().manual_seed(5), dtype=torch.float64)
    ddim = d.ddim_sample(m.net, shape, steps or T, 1.0, torch.Generator().manual_seed(5),
                         dtype=torch.float64)
    assert anc.abs().mean() > 0.1
    torch.testing.assert_close(ddim, anc, rtol=0, atol=1e-7)
    # eta = 0 is another (deterministic) sampler: different, and repeatable
    det = d.ddim_sample(m.net, shape, steps or T, 0.0, torch.Generator().manual_seed(5),
                        dtype=torch.float64)
    again = d.ddim_sample(m.net, shape, steps or T, 0.0, torch.Generator().manual_seed(5),
                          dtype=torch.float64)
    assert torch.equal(det, again) and not torch.allclose(det, anc, atol=1e-3)


@pytest.mark.parametrize('target', ['eps', 'x0'])
def test_ancestral_mean_path_matches_ddim_mean_path(target):
    """With the noise switched off both samplers step to the posterior mean mu~(x_t, x0_hat),
    at every t of the ancestral mean path (each step compared from the same x_t, so float64
    rounding does not compound over the 100 steps)."""
    m = random_prior(target=target)
    d = m.diffusion
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in range(m.config.timesteps, 0, -1):
        tt = torch.full((2,), t)
        a = d.p_mean_variance(m.net, x, tt, clip=True)['mean']
        x0, eps = d.predict(m.net, x, tt, clip=True)
        ab_t, ab_s = float(d.abar[t]), float(d.abar[t - 1])
        sigma2 = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)                 # eta = 1
        b = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma2, 0.0)) * eps
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        x = a


def _point_mass_case(schedule):
    """Data = one image x*; the model predicts x0 = x* whatever x_t (the exact posterior)."""
    T = 50
    d = GaussianDiffusion(T, schedule, target='x0')
    x_star = torch.tensor([-1.0, -0.2, 2 * 130 / 255 - 1, 1.0],
                          dtype=torch.float64).view(1, 1, 2, 2)
    return d, x_star, T


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_bits_per_dim_of_a_point_mass_against_hand_value(schedule):
    d, x_star, T = _point_mass_case(schedule)
    exact = d.nll_terms(lambda x, t: x_star.expand_as(x), x_star, steps=None)
    abar = numpy_abar(schedule, T)
    # L_T: KL(N(sqrt(abar_T) x, 1 - abar_T) || N(0, 1)) per dimension
    v = 1 - abar[T]
    prior = sum(0.5 * (abar[T] * x * x + v - 1 - math.log(v)) for x in x_star.flatten().tolist())
    # L_0: the 8-bit bin of x* under N(x*, alpha~_2); end bins are half-infinite
    a2 = abar[2] / abar[1]
    std = math.sqrt((1 - a2) * (1 - abar[1]) / (1 - abar[2]))
    phi = 0.5 * (1 + math.erf((1 / 255) / std / math.sqrt(2)))     # Phi(half bin / std)
    decoder = -2 * math.log(phi) - 2 * math.log(2 * phi - 1)      # two end, two inner pixels
    bits = 1 / (4 * math.log(2))
    assert float(exact['diffusion']) == 0.0                       # exact posterior: no KL
    assert float(exact['prior']) == pytest.approx(prior * bits, rel=1e-9)
    assert float(exact['decoder']) == pytest.approx(decoder * bits, rel=1e-6)
    assert float(exact['total']) == pytest.approx((prior + decoder) * bits, rel=1e-6)


def test_diffusion_term_telescopes_and_strided_estimate_is_unbiased():
    """A model that always predicts x0 = 0 pays sum_{t>=2} 1/2 (SNR(t-1) - SNR(t)) ||x*||^2
    = 1/2 (SNR(1) - SNR(T)) ||x*||^2; the stratified estimate averages to the same."""
    d, x_star, T = _point_mass_case('cosine')
    zero = lambda x, t: torch.zeros_like(x)   # noqa: E731
    abar = numpy_abar('cosine', T)
    snr = abar[1:] / (1 - abar[1:])                             # SNR(1)..SNR(T)
    hand = 0.5 * (snr[0] - snr[T - 1]) * float((x_star ** 2).sum()) / (4 * math.log(2))
    exact = float(d.nll_terms(zero, x_star, steps=None)['diffusion'])
    assert exact == pytest.approx(hand, rel=1e-9)
    g = torch.Generator().manual_seed(0)
    draws = [float(d.nll_terms(zero, x_star, steps=8, generator=g)['diffusion'])
             for _ in range(1000)]
    assert np.std(draws) > 0                                    # really a random subset of t
    assert abs(np.mean(draws) - hand) < 4 * np.std(draws) / math.sqrt(len(draws))
    assert float(d.nll_terms(zero, x_star, steps=T - 1)['diffusion']) == pytest.approx(hand)


def test_bits_per_dim_of_a_real_model_is_finite_and_batched_consistently():
    m = random_prior(size=8).float()
    x = torch.rand(3, 3, 8, 8)
    x = (x * 255).round() / 255                                  # on the 8-bit grid
    full = m.nll_bits_per_dim(x, steps=None)
    # x is uniform on the 8-bit grid: no model codes it in fewer than 8 bits/dim (on average;
    # this untrained one needs far more)
    assert full.shape == (3,) and torch.isfinite(full).all() and (full > 8).all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    one = m.diffusion.nll_terms(m.net, x * 2 - 1, 10, g1, max_batch=3)['total']
    many = m.diffusion.nll_terms(m.net, x * 2 - 1, 10, g2, max_batch=300)['total']
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-4)


def test_ood_score_is_per_frame_and_ranks_unusual_frames_higher():
    d, x_star, T = _point_mass_case('cosine')
    model = lambda x, t: x_star.expand_as(x)   # noqa: E731  (knows the data exactly)
    odd = x_star.clone()
    odd[..., 0, 0] = 1.0                                        # was -1: error 2^2 / 4 dims = 1
    s = d.ood_score(model, torch.cat([x_star, odd, x_star]))
    # by hand: the mean over the levels t = 0.02 T, 0.1 T, 0.3 T of SNR(t) x 1
    abar = numpy_abar('cosine', T)
    levels = [max(1, round(f * T)) for f in (0.02, 0.1, 0.3)]
    assert d.default_ood_levels() == levels == [1, 5, 15]
    hand = np.mean([abar[t] / (1 - abar[t]) for t in levels])
    assert s.shape == (3,) and float(s[0]) == 0.0
    assert float(s[1]) == pytest.approx(hand, rel=1e-9)
    assert torch.equal(s[0], s[2])
    assert torch.equal(d.ood_score(model, odd), s[1:2])         # same alone as in a batch
    m = random_prior(size=8).float()
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(m.ood_score(x)[2:4], m.ood_score(x[2:4]))


def test_ema_and_checkpoint_round_trip(tmp_path):
    m = random_prior(size=8).float()
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)                                   # first decay is min(0.5, 2/11)
    p0, e0 = next(m.parameters()), next(ema.model.parameters())
    torch.testing.assert_close(e0, p0 - 1.0 * (2 / 11))
    path = tmp_path / 'prior.pt'
    ema.model.save(path, extra={'ood': {'threshold': 0.25, 't_levels': [2, 5]}})
    loaded = PriorModel.from_checkpoint(path)
    assert loaded.config == m.config and not loaded.training
    assert loaded.ood_threshold == 0.25
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loaded.ood_score(x), ema.model.ood_score(x, t_levels=[2, 5]),
                               rtol=1e-5, atol=0)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(loaded.ddim_sample(2, generator=g1),
                               ema.model.ddim_sample(2, generator=g2))
    # a checkpoint whose weights do not fit its config is named clearly
    raw = load_checkpoint(path, 'prior')
    bad = dict(raw['config'], base_channels=16)
    save_checkpoint(tmp_path / 'bad.pt', 'prior', bad, raw['state_dict'])
    with pytest.raises(ValueError, match='does not match the stored prior config'):
        PriorModel.from_checkpoint(tmp_path / 'bad.pt')
    save_checkpoint(tmp_path / 'ssm.pt', 'ssm', {}, {})
    with pytest.raises(ValueError, match="expected 'prior'"):
        PriorModel.from_checkpoint(tmp_path / 'ssm.pt')


def test_config_and_threshold_validation():
    with pytest.raises(ValueError, match='unknown'):
        DiffusionConfig.from_dict({'base_channel': 3})
    with pytest.raises(ValueError, match='divisible'):
        DiffusionConfig(image_size=18, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match='target'):
        DiffusionConfig(target='v')
    assert DiffusionConfig.from_dict(DiffusionConfig().to_dict()) == DiffusionConfig()
    assert calibrate_threshold(np.arange(101), 0.99) == pytest.approx(99.0)
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.99)
    with pytest.raises(ValueError):
        PriorModel(DiffusionConfig.from_preset('debug', image_size=8)).loss(
            torch.rand(2, 3, 16, 16))


def test_vlb_training_loss_is_the_bound_estimate():
    """loss='vlb' trains on T * E_t[L_{t-1}] per dimension (L_0 the discretised decoder)."""
    m = random_prior(size=8, loss='vlb', target='x0').float()
    x = (torch.rand(4, 3, 8, 8) * 255).round() / 255
    terms = m.loss(x, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, m.config.timesteps + 1, (4,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    vlb = m.diffusion.loss_terms(m.net, x * 2 - 1, t, eps)['vlb']
    torch.testing.assert_close(terms['loss'], vlb.mean() * m.config.timesteps / x[0].numel())
    terms['loss'].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize('target', ['eps', 'x0'])
def test_trunc_snr_loss_is_eps_mse_at_low_noise_and_x0_mse_at_high_noise(target):
    """loss='trunc_snr' = max(SNR, 1) ||x0 - x0_hat||^2: the eps-prediction MSE where SNR >= 1,
    the x0-prediction MSE where SNR < 1, for either network target."""
    m = random_prior(size=8, loss='trunc_snr', target=target).float()
    d = m.diffusion
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    snr = d.snr[1:]
    t_low = int(torch.nonzero(snr > 4)[-1]) + 1         # SNR well above 1
    t_high = int(torch.nonzero(snr < 0.25)[0]) + 1      # SNR well below 1
    for t_val, want in ((t_low, 'eps'), (t_high, 'x0')):
        t = torch.full((4,), t_val)
        eps = torch.randn_like(x0)
        terms = d.loss_terms(m.net, x0, t, eps)
        x0_hat, eps_hat = d.predict(m.net, d.q_sample(x0, t, eps), t)
        ref = (((eps_hat - eps) if want == 'eps' else (x0_hat - x0)) ** 2).mean((1, 2, 3))
        torch.testing.assert_close(terms['trunc_snr'], ref, rtol=1e-4, atol=1e-6)
    loss = m.loss((x0 + 1) / 2, generator=torch.Generator().manual_seed(0))
    # the training loss is this term's mean at the t and noise the generator draws
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, m.config.timesteps + 1, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ref = d.loss_terms(m.net, x0, t, eps)['trunc_snr'].mean()
    torch.testing.assert_close(loss['loss'], ref, rtol=1e-5, atol=0)
    loss['loss'].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
