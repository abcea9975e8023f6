"""Sequential VAE (world_model_ctrl.ssm): KL, ELBO terms, filtering, imagination, learning."""
import math

import numpy as np
import pytest
from conftest import tiny_world_model
import torch
from torch.distributions import Independent, Normal, kl_divergence

from world_model_ctrl.ssm import (SSMConfig, WorldModel, gaussian_kl, images_to_tensor,
                                  presets)


tiny = tiny_world_model


def random_batch(B=3, T=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, T, 3, size, size, generator=g)
    a = torch.rand(B, T, 2, generator=g) - 0.5
    a[:, 0] = 0.0                       # episode start: no previous command
    r = -torch.rand(B, T, generator=g)
    return x, a, r


def moving_square(n, T, size=16, sq=4, seed=0):
    """A white square on a dark floor, moved by velocity actions; reward = -distance to centre."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, T, size, size, 3), 25, np.uint8)
    acts = np.zeros((n, T, 2), np.float32)
    rews = np.zeros((n, T), np.float32)
    hi = size - sq
    for i in range(n):
        p = rng.uniform(0, hi, 2)
        for t in range(T):
            if t > 0:                   # acts[:, t] = a_{t-1}, the command that produced frame t
                acts[i, t] = rng.uniform(-0.5, 0.5, 2)
                p = np.clip(p + acts[i, t] * 4.0, 0, hi)
            r, c = int(round(p[1])), int(round(p[0]))
            imgs[i, t, r:r + sq, c:c + sq] = 255
            rews[i, t] = -np.linalg.norm(p - hi / 2) / size
    return images_to_tensor(imgs), torch.from_numpy(acts), torch.from_numpy(rews)


# ---- config ----

def test_config_presets_and_dict_round_trip():
    assert {'default', 'debug'} <= set(presets)
    cfg = SSMConfig.from_preset('debug', latent_dim=5)
    assert cfg.latent_dim == 5 and cfg.cnn_depth == presets['debug']['cnn_depth']
    assert SSMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='unknown SSMConfig keys.*latnet_dim'):
        SSMConfig.from_dict({'latnet_dim': 4})
    with pytest.raises(ValueError, match='unknown SSM preset'):
        SSMConfig.from_preset('huge')
    with pytest.raises(ValueError, match='power of two'):
        SSMConfig(image_size=48)
    with pytest.raises(ValueError, match='kl_balance'):
        SSMConfig(kl_balance=1.5)


@pytest.mark.parametrize('size', [16, 32, 64])
def test_encoder_decoder_shapes(size):
    m = WorldModel(SSMConfig.from_preset('debug', image_size=size))
    x, a, _ = random_batch(B=2, T=3, size=size)
    post = m.observe(x, a)
    assert post.mean.shape == (2, 3, 8) and post.h.shape == (2, 3, 64)
    assert (post.std >= m.config.min_std).all()
    assert m.decode(post.mean).shape == (2, 3, 3, size, size)
    assert m.reward(post.mean).shape == (2, 3)
    with pytest.raises(ValueError, match='expected images of shape'):
        m.observe(x[..., :8, :8], a)


def test_images_to_tensor():
    img = np.zeros((2, 4, 16, 16, 3), np.uint8)
    img[1, 2, 3, 5] = (255, 51, 0)     # one pixel at row 3, col 5
    t = images_to_tensor(img)
    assert t.shape == (2, 4, 3, 16, 16) and t.dtype == torch.float32
    assert torch.allclose(t[1, 2, :, 3, 5], torch.tensor([1.0, 0.2, 0.0]))
    assert t.sum() == pytest.approx(1.2)
    assert torch.equal(images_to_tensor(torch.from_numpy(img)), t)
    with pytest.raises(TypeError, match='uint8'):
        images_to_tensor(img.astype(np.float32))


# ---- KL ----

def test_gaussian_kl_matches_monte_carlo_and_torch():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(4, generator=g), torch.randn(4, generator=g)
    s1, s2 = torch.rand(4, generator=g) + 0.3, torch.rand(4, generator=g) + 0.3
    kl = gaussian_kl(m1, s1, m2, s2)
    q, p = Independent(Normal(m1, s1), 1), Independent(Normal(m2, s2), 1)
    assert kl.shape == ()
    assert torch.allclose(kl, kl_divergence(q, p), atol=1e-5)
    z = m1 + s1 * torch.randn(200_000, 4, generator=g)
    mc = (q.log_prob(z) - p.log_prob(z)).mean()
    assert abs(mc.item() - kl.item()) < 0.05 * kl.item() + 0.01
    assert gaussian_kl(m1, s1, m1, s1).abs().item() < 1e-6
    # batched: sums over the last dim only
    assert gaussian_kl(m1.expand(3, 2, 4), s1, m2, s2).shape == (3, 2)


# ---- filtering ----

@pytest.mark.parametrize('deterministic_prior', [False, True])
def test_observe_equals_repeated_step(deterministic_prior):
    m = tiny(deterministic_prior=deterministic_prior)
    x, a, _ = random_batch(B=3, T=6)
    with torch.no_grad():
        post = m.observe(x, a)
        h = None
        for t in range(6):
            h, mean, std = m.step(h, x[:, t], a[:, t])
            assert torch.allclose(mean, post.mean[:, t], atol=1e-6, rtol=0)
            assert torch.allclose(std, post.std[:, t], atol=1e-6, rtol=0)
            assert torch.allclose(h, post.h[:, t], atol=1e-6, rtol=0)
        # continuing from a carried state equals filtering the whole stream at once
        first = m.observe(x[:, :3], a[:, :3])
        rest = m.observe(x[:, 3:], a[:, 3:], h0=first.h[:, -1])
        assert torch.allclose(rest.mean, post.mean[:, 3:], atol=1e-6, rtol=0)
        # the filter sees only the past: changing a later frame leaves earlier beliefs alone
        x2 = x.clone()
        x2[:, 4] = 1.0 - x2[:, 4]
        post2 = m.observe(x2, a)
        assert torch.allclose(post2.mean[:, :4], post.mean[:, :4], atol=1e-6)
        assert not torch.allclose(post2.mean[:, 4], post.mean[:, 4], atol=1e-4)


# ---- ELBO ----

@pytest.mark.parametrize('deterministic_prior', [False, True])
def test_elbo_terms_closed_form_with_zero_weights(deterministic_prior):
    """All weights zero: q = N(0, s), p(z_t|z_{t-1}) = N(z_{t-1}, s), pixels N(0.5, obs_std)."""
    m = tiny(deterministic_prior=deterministic_prior, obs_std=0.2, reward_std=0.3, min_std=0.1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    B, T, Z = 2, 4, m.config.latent_dim
    x, a, r = random_batch(B=B, T=T)
    out = m.elbo(x, a, r, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(B, T, Z, generator=torch.Generator().manual_seed(7))

    s = math.log(2.0) + 0.1                        # softplus(0) + min_std
    n_pix = 3 * 16 * 16
    recon = (-0.5 * ((x - 0.5) / 0.2) ** 2).sum((-3, -2, -1)) \
        - n_pix * (math.log(0.2) + 0.5 * math.log(2 * math.pi))            # (B, T)
    rew = -0.5 * (r / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)
    kl_first = Z * 0.5 * (s ** 2 - 1 - 2 * math.log(s))
    # KL(N(0, s) || N(z_{t-1}, s)) = |z_{t-1}|^2 / (2 s^2), z_{t-1} = s * eps_{t-1}
    kl_rest = 0.5 * (eps[:, :-1] ** 2).sum((1, 2))                           # (B,)

    assert out['recon_loglik'].item() == pytest.approx(recon.mean().item(), rel=1e-5)
    assert out['reward_loglik'].item() == pytest.approx(rew.mean().item(), rel=1e-5)
    assert out['kl_first'].item() == pytest.approx(kl_first, rel=1e-5)
    kl = (kl_first + kl_rest) / T
    assert out['kl'].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    elbo = recon.mean(1) + rew.mean(1) - kl
    assert out['elbo'].item() == pytest.approx(elbo.mean().item(), rel=1e-5)


def reference_elbo(m, x, a, r, seed):
    """The filtering ELBO of theory.md built from torch.distributions and the model's parts."""
    cfg = m.config
    post = m.observe(x, a)
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(seed))
    z = post.mean + post.std * eps
    px = Independent(Normal(m.decode(z), cfg.obs_std), 3)
    pr = Normal(m.reward(z), cfg.reward_std)
    T = x.shape[1]
    terms = px.log_prob(x) + pr.log_prob(r)                                  # (B, T)
    p1 = Independent(Normal(torch.zeros_like(z[:, 0]), 1.0), 1)
    kl1 = kl_divergence(Independent(Normal(post.mean[:, 0], post.std[:, 0]), 1), p1)
    pm, ps = m.prior(z[:, :-1], a[:, 1:])          # p(z_t | z_{t-1}, a_{t-1}), a_{t-1} = a[:, t]
    qt = Independent(Normal(post.mean[:, 1:], post.std[:, 1:]), 1)
    klt = kl_divergence(qt, Independent(Normal(pm, ps), 1))                  # (B, T-1)
    return ((terms.sum(1) - kl1 - klt.sum(1)) / T).mean()


def test_elbo_matches_torch_distributions_and_balance_half_is_plain_kl():
    m = tiny(free_nats=0.0, kl_balance=0.5, reward_scale=1.0)
    x, a, r = random_batch(B=3, T=5, seed=1)
    out = m.elbo(x, a, r, generator=torch.Generator().manual_seed(3))
    ref = reference_elbo(m, x, a, r, seed=3)
    assert out['elbo'].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out['loss'].item() == pytest.approx(-ref.item(), rel=1e-5)
    # alpha = 0.5 must also give the gradient of the plain ELBO, not half of its KL part
    g_loss = torch.autograd.grad(out['loss'], list(m.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(-ref, list(m.parameters()), allow_unused=True)
    for (name, _), gl, gr in zip(m.named_parameters(), g_loss, g_ref):
        assert torch.allclose(gl, gr, atol=1e-4, rtol=1e-4), name


def test_loss_knobs_free_nats_balance_reward_scale():
    x, a, r = random_batch(B=2, T=4, seed=2)

    def run(**kw):
        m = tiny(**kw)
        return m, m.elbo(x, a, r, generator=torch.Generator().manual_seed(0))

    _, base = run(free_nats=0.0, kl_balance=0.8, reward_scale=1.0)
    # balancing moves gradients, never the value; the honest ELBO ignores every knob
    assert base['loss'].item() == pytest.approx(-base['elbo'].item(), rel=1e-5)
    _, scaled = run(free_nats=0.0, kl_balance=0.8, reward_scale=3.0)
    assert scaled['elbo'].item() == pytest.approx(base['elbo'].item(), rel=1e-6)
    assert (scaled['loss'] - base['loss']).item() == pytest.approx(
        -2 * base['reward_loglik'].item(), rel=1e-4)
    # free nats above every per-step KL: the KL part of the loss is the constant T * free_nats
    m, free = run(free_nats=1e4, kl_balance=0.8, reward_scale=1.0)
    fit = free['recon_loglik'] + free['reward_loglik']
    assert free['loss'].item() == pytest.approx(-(fit.item() - 1e4), rel=1e-5)
    free['loss'].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.transition.parameters())
    # alpha = 0: the prior is only a stop-gradient target, so the transition learns nothing
    m, post_only = run(free_nats=0.0, kl_balance=0.0)
    post_only['loss'].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.transition.parameters())
    m, prior_only = run(free_nats=0.0, kl_balance=1.0)
    prior_only['loss'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.transition.parameters())


def test_overshoot_scores_the_mean_path_under_the_recorded_actions():
    # What CEM does with the model, written out: from z_t roll the prior's mean path under
    # a_t..a_{t+d-1} (= prev_actions[t+1..t+d]) and score r(z_{t+d}) against r_{t+d}.
    x, a, r = random_batch(B=2, T=6, seed=3)
    D, T = 3, 6
    m = tiny(overshoot=D, free_nats=0.0)
    post = m.observe(x, a)
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(0))
    got = m._overshoot(z, post, a, r)
    cfg = m.config
    rew, kls = [], []
    for d in range(1, D + 1):
        rd, kd = [], []
        for t in range(T - d):
            zi = m.imagine(z[:, t], a[:, t + 1:t + d + 1], sample=False)[:, -1]
            _, s = m.prior(m.imagine(z[:, t], a[:, t + 1:t + d], sample=False)[:, -1]
                           if d > 1 else z[:, t], a[:, t + d])
            rd.append(-0.5 * ((r[:, t + d] - m.reward(zi)) / cfg.reward_std) ** 2
                      - math.log(cfg.reward_std) - 0.5 * math.log(2 * math.pi))
            kd.append(gaussian_kl(post.mean[:, t + d], post.std[:, t + d], zi, s))
        rew.append(torch.stack(rd).mean())
        kls.append(torch.stack(kd).mean())
    want_r, want_kl = torch.stack(rew).mean(), torch.stack(kls).mean()
    assert got['overshoot_reward_loglik'].item() == pytest.approx(want_r.item(), rel=1e-5)
    assert got['overshoot_kl'].item() == pytest.approx(want_kl.item(), rel=1e-5)
    assert got['loss'].item() == pytest.approx(
        -(cfg.reward_scale * want_r - want_kl).item(), rel=1e-5)
    # off by default: the loss is the ELBO's alone; on, it adds overshoot_scale x the terms
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    off = tiny(free_nats=0.0).elbo(x, a, r, generator=g())
    assert 'overshoot_kl' not in off
    on = tiny(free_nats=0.0, overshoot=D, overshoot_scale=2.0).elbo(x, a, r, generator=g())
    assert on['elbo'].item() == pytest.approx(off['elbo'].item(), rel=1e-6)
    assert on['loss'].item() > off['loss'].item()
    # the reward term trains the transition even with the KL balance putting nothing there
    m = tiny(overshoot=D, kl_balance=0.0, free_nats=1e4)
    m.elbo(x, a, r)['loss'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.transition.parameters())
    with pytest.raises(ValueError, match='overshoot'):
        SSMConfig(overshoot=-1)


# ---- imagination ----

def test_imagine_shapes_determinism_and_batching():
    m = tiny()
    N, H, Z = 5, 7, m.config.latent_dim
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(N, Z, generator=g)
    acts = torch.rand(N, H, 2, generator=g) - 0.5
    with torch.no_grad():
        z = m.imagine(z0, acts, sample=False)
        assert z.shape == (N, H, Z)
        assert torch.equal(z, m.imagine(z0, acts, sample=False))
        # mean path = repeated transition means, a_k drives z_k -> z_{k+1}
        zk = z0
        for k in range(H):
            zk, _ = m.prior(zk, acts[:, k])
            assert torch.allclose(z[:, k], zk, atol=1e-6)
        s1 = m.imagine(z0, acts, generator=torch.Generator().manual_seed(1))
        s2 = m.imagine(z0, acts, generator=torch.Generator().manual_seed(1))
        s3 = m.imagine(z0, acts, generator=torch.Generator().manual_seed(2))
        assert torch.equal(s1, s2) and not torch.allclose(s1, s3)
        rew = m.imagine_rewards(z0, acts, sample=False)
        assert rew.shape == (N, H)
        loop = torch.stack([m.imagine_rewards(z0[i:i + 1], acts[i:i + 1], sample=False)[0]
                            for i in range(N)])
        assert torch.allclose(rew, loop, atol=1e-5)
        # sampled rollouts: the same noise gives the same rewards batched or one by one
        rs = m.imagine_rewards(z0, acts, generator=torch.Generator().manual_seed(4))
        assert torch.allclose(rs, m.reward(m.imagine(z0, acts,
                                                     generator=torch.Generator().manual_seed(4))))
    with pytest.raises(ValueError, match='imagine wants'):
        m.imagine(z0[0], acts)


def test_openloop_filters_context_then_imagines_recorded_actions():
    m = tiny()
    x, a, _ = random_batch(B=2, T=6)
    pred = m.openloop(x, a, context=2, horizon=4)
    assert pred.shape == (2, 4, 3, 16, 16)
    assert pred.min() >= 0 and pred.max() <= 1
    with torch.no_grad():
        post = m.observe(x[:, :2], a[:, :2])
        zk, frames = post.mean[:, -1], []
        for k in range(4):
            zk, _ = m.prior(zk, a[:, 2 + k])
            frames.append(m.decode(zk).clamp(0, 1))
    assert torch.allclose(pred, torch.stack(frames, 1), atol=1e-6)
    with pytest.raises(ValueError, match='context'):
        m.openloop(x, a, context=3, horizon=4)


# ---- learning ----

def test_debug_model_learns_moving_square():
    torch.manual_seed(0)
    x, a, r = moving_square(64, 8, seed=0)
    m = WorldModel(SSMConfig.from_preset('debug', image_size=16))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    ex, ea, er = x[:16], a[:16], r[:16]

    def evaluate():
        with torch.no_grad():
            return m.elbo(ex, ea, er, generator=torch.Generator().manual_seed(1))

    before = evaluate()
    g = torch.Generator().manual_seed(2)
    for _ in range(150):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = m.elbo(x[idx], a[idx], r[idx])['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    drop = before['loss'].item() - after['loss'].item()
    assert drop > 0.3 * abs(before['loss'].item()), (before['loss'], after['loss'])
    # beyond the background: the model must beat a constant mean-image decoder, i.e. it tracks
    # the square, and a constant reward predictor
    cfg = m.config
    mean_img = x.mean((0, 1))
    const_recon = Normal(mean_img, cfg.obs_std).log_prob(ex).sum((-3, -2, -1)).mean()
    const_rew = Normal(r.mean(), cfg.reward_std).log_prob(er).mean()
    assert after['recon_loglik'] > const_recon + 150, (after['recon_loglik'], const_recon)
    assert after['reward_loglik'] > const_rew, (after['reward_loglik'], const_rew)
