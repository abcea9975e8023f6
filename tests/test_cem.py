"""CEM planner: finds known optima, respects bounds, warm-starts, batches, is seedable."""

import dataclasses
import math

import pytest
import torch

from world_model_ctrl.cem import (CEMConfig, CEMPlanner, cem_plan, resolve_device,
                                  shift_plan)

DT = 1.0


def linear_model(goal, calls=None):
    """Toy latent model z_{k+1} = z_k + a_k*dt, reward -||z_{k+1} - goal||^2."""
    def rollout_rewards(z0, actions):  # (M, Z), (M, H, A) -> (M, H)
        if calls is not None:
            calls.append((z0.clone(), actions.clone()))
        z = z0.unsqueeze(1) + DT * actions.cumsum(1)  # (M, H, Z): z_{t+1..t+H}
        return -((z - goal) ** 2).sum(-1)
    return rollout_rewards


def cfg(**kw):
    base = dict(candidates=200, horizon=5, iterations=8, top_k=20, particles=1,
                init_std=0.3, min_std=0.01, device="cpu")
    base.update(kw)
    return CEMConfig(**base)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_finds_optimum_of_quadratic_reward():
    # From z=0 the best plan reaches g in one step and then stays: a_0 = g/dt, a_k = 0.
    # A short horizon: a diagonal Gaussian is slow along the a_0 + a_1 = g ridge of long ones.
    goal = torch.tensor([0.3, -0.2])
    c = cfg(horizon=3, iterations=10)
    res = cem_plan(linear_model(goal), torch.zeros(2), torch.zeros(2), c, generator=seeded())
    assert torch.allclose(res.action, goal / DT, atol=0.02), res.action
    assert res.plan_mean.shape == (3, 2) and res.plan_std.shape == (3, 2)
    # rewards are -||z - g||^2 <= 0: the elites' return is at most 0, and near it (reached g
    # at once and stayed)
    assert -0.05 < res.predicted_return <= 0.0


def test_optimum_outside_bounds_sits_on_bound():
    # The goal is out of reach: the best plan drives at the box corner every step.
    goal = torch.tensor([5.0, -4.0])
    calls = []
    c = cfg(action_low=(-0.5, -0.4), action_high=(0.5, 0.4))
    res = cem_plan(linear_model(goal, calls), torch.zeros(2), torch.zeros(2), c,
                   generator=seeded())
    assert torch.allclose(res.action, torch.tensor([0.5, -0.4]), atol=0.02), res.action
    low, high = torch.tensor(c.action_low), torch.tensor(c.action_high)
    assert ((res.plan_mean >= low) & (res.plan_mean <= high)).all()
    for _, actions in calls:  # every candidate the model saw was inside the box
        assert ((actions >= low) & (actions <= high)).all()


def test_out_of_bounds_warm_start_is_clipped():
    c = cfg(iterations=0)
    res = cem_plan(linear_model(torch.zeros(2)), torch.zeros(2), torch.zeros(2), c,
                   init_mean=torch.full((5, 2), 3.0))
    assert torch.equal(res.action, torch.tensor([0.5, 0.5]))
    assert math.isnan(res.predicted_return) and res.iterations == 0


def test_discounted_return_counts_steps_one_to_h():
    c = cfg(iterations=1, gamma=0.9, horizon=4)
    res = cem_plan(lambda z, a: torch.ones(a.shape[:2]), torch.zeros(3), torch.zeros(3), c)
    assert res.predicted_return == pytest.approx(sum(0.9 ** k for k in range(1, 5)))


def test_score_is_mean_over_particles():
    # r_k = first latent coordinate of the particle: the score is E_q[z] * sum gamma^k.
    seen = []

    def rollout(z0, actions):
        seen.append(z0)
        return z0[:, :1].expand(-1, actions.shape[1])  # (M, H)

    c = cfg(iterations=1, particles=5, gamma=0.9, horizon=3)
    res = cem_plan(rollout, torch.zeros(2), torch.ones(2), c, generator=seeded(3))
    particles = seen[0].reshape(c.candidates, c.particles, 2)[0, :, 0]  # (P,)
    expected = particles.mean().item() * (0.9 + 0.81 + 0.729)
    assert res.predicted_return == pytest.approx(expected, rel=1e-5)


def test_shift_plan():
    plan = torch.arange(8.0).reshape(4, 2)  # (H, A)
    shifted = shift_plan(plan, 2)
    assert torch.equal(shifted, torch.tensor([[2.0, 3], [4, 5], [6, 7], [6, 7]]))
    assert torch.equal(shift_plan(plan.flatten(), 2), shifted)  # flat (H*A,) input
    assert torch.equal(shift_plan(plan, 2, pad="zero")[-1], torch.zeros(2))
    with pytest.raises(ValueError):
        shift_plan(plan, 2, pad="wrap")


def test_planner_warm_starts_from_shifted_previous_plan():
    # Reward wants a different action at every step: a_k = (target_k, 0).
    target = torch.linspace(-0.4, 0.4, 5)  # (H,)

    def rollout(z0, actions):
        return -((actions[..., 0] - target) ** 2 + actions[..., 1] ** 2)  # (M, H)

    planner = CEMPlanner(cfg(iterations=10), generator=seeded())
    first = planner.plan(rollout, torch.zeros(2), torch.zeros(2))
    assert torch.allclose(first.plan_mean[:, 0], target, atol=0.05)
    # No search on the next step: the action must come from the shifted plan alone.
    planner.cfg = dataclasses.replace(planner.cfg, iterations=0)
    second = planner.plan(rollout, torch.zeros(2), torch.zeros(2))
    assert torch.equal(second.action, first.plan_mean[1])
    assert torch.equal(second.plan_mean, shift_plan(first.plan_mean, 2))
    # Without warm start (or after reset) it starts again from the middle of the box.
    planner.reset()
    assert torch.equal(planner.plan(rollout, torch.zeros(2), torch.zeros(2)).action,
                       torch.zeros(2))
    planner.plan(rollout, torch.zeros(2), torch.zeros(2))
    planner.cfg = dataclasses.replace(planner.cfg, warm_start=False)
    assert torch.equal(planner.plan(rollout, torch.zeros(2), torch.zeros(2)).action,
                       torch.zeros(2))


def test_rollout_is_one_batched_call_per_iteration_over_candidates_and_particles():
    calls = []
    c = cfg(candidates=50, top_k=5, particles=3, iterations=4, horizon=6)
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5])
    cem_plan(linear_model(torch.zeros(3), calls), mean, std,
             dataclasses.replace(c, action_low=(-1, -1, -1), action_high=(1, 1, 1)))
    assert len(calls) == 4
    for z0, actions in calls:
        assert z0.shape == (150, 3) and actions.shape == (150, 6, 3)
        z0, actions = z0.reshape(50, 3, 3), actions.reshape(50, 3, 6, 3)  # (N, P, ...)
        # P distinct particles, each candidate under all of them; same particles for all.
        assert torch.unique(z0[0], dim=0).shape[0] == 3
        assert torch.equal(z0, z0[:1].expand_as(z0))
        assert torch.equal(actions, actions[:, :1].expand_as(actions))


def test_particles_are_deterministic_given_a_seed():
    goal = torch.tensor([0.2, 0.1])
    mean, std = torch.tensor([0.0, 0.1]), torch.tensor([0.3, 0.3])
    c = cfg(particles=4, iterations=3)
    a = cem_plan(linear_model(goal), mean, std, c, generator=seeded(7))
    b = cem_plan(linear_model(goal), mean, std, c, generator=seeded(7))
    d = cem_plan(linear_model(goal), mean, std, c, generator=seeded(8))
    assert torch.equal(a.plan_mean, b.plan_mean) and a.predicted_return == b.predicted_return
    assert not torch.equal(a.plan_mean, d.plan_mean)


def test_config_rejects_unknown_keys_and_bad_values():
    c = CEMConfig.from_dict({"candidates": 10, "top_k": 2, "action_low": [-1, -1, -1],
                             "action_high": [1, 1, 1]})
    assert c.action_dim == 3 and c.action_low == (-1.0, -1.0, -1.0)
    with pytest.raises(ValueError, match="candidate"):
        CEMConfig.from_dict({"candidate": 10})
    with pytest.raises(ValueError):
        CEMConfig(candidates=10, top_k=20)
    with pytest.raises(ValueError):
        CEMConfig(action_low=(0.5, 0.5), action_high=(-0.5, 0.5))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_cpu_belief():
    goal = torch.tensor([0.3, -0.2], device="cuda")
    c = cfg(horizon=3, iterations=10, device="cuda")
    res = cem_plan(linear_model(goal), torch.zeros(2), torch.zeros(2), c, generator=seeded())
    assert res.action.device.type == "cuda"
    assert torch.allclose(res.action.cpu(), goal.cpu(), atol=0.02)


def test_per_dimension_std_explores_each_field_on_its_own_scale():
    """A speed in m/s beside a turn rate in rad/s: one std per action dimension (the planner's
    relative_std). With every candidate an elite, one refit returns the sampling std itself;
    the floor applies per dimension too."""
    flat = lambda z0, a: torch.zeros(a.shape[0], a.shape[1])        # noqa: E731
    c = cfg(candidates=4000, top_k=4000, iterations=1, horizon=2, init_std=(0.3, 1.8),
            min_std=(0.05, 2.5), action_low=(-5.0, -10.0), action_high=(5.0, 10.0))
    res = cem_plan(flat, torch.zeros(2), torch.zeros(2), c, generator=seeded())
    assert res.plan_std[:, 0] == pytest.approx([0.3, 0.3], rel=0.05)   # its own init std
    assert torch.all(res.plan_std[:, 1] == 2.5)                          # floored at 2.5
    with pytest.raises(ValueError, match='init_std has 3 values for 2'):
        cfg(init_std=(0.1, 0.2, 0.3))


def test_commands_in_flight_are_the_latest_at_each_step_since_the_frame():
    import numpy as np

    from world_model_ctrl.planner import commands_in_flight
    ms = 1_000_000
    a, b, c = np.array([0.1, 0.0]), np.array([0.2, 0.0]), np.array([0.3, 0.0])
    sent = [(950 * ms, a), (1040 * ms, b), (1060 * ms, c)]
    # frame at 1000 ms, 100 ms steps: nothing happened yet 99 ms later
    assert commands_in_flight(sent, 1000 * ms, 1099 * ms, 100 * ms, 3, 2) == []
    # one step (at 1100 ms) with the latest command by then: c, sent after b
    got = commands_in_flight(sent, 1000 * ms, 1150 * ms, 100 * ms, 3, 2)
    assert len(got) == 1 and got[0] is c
    # a frame 250 ms old: steps at 1100 and 1200 ms
    got = commands_in_flight(sent, 1000 * ms, 1250 * ms, 100 * ms, 3, 2)
    assert [g[0] for g in got] == [0.3, 0.3]
    # steps at 900 (nothing sent yet: zero), 1000 (only a), 1100 (c); at most max_steps
    got = commands_in_flight(sent, 800 * ms, 1450 * ms, 100 * ms, 3, 2)
    assert [g[0] for g in got] == [0.0, 0.1, 0.3]
    # no command yet: zero; a negative age or no step: none
    assert commands_in_flight([], 0, 150 * ms, 100 * ms, 3, 2)[0].tolist() == [0.0, 0.0]
    assert commands_in_flight(sent, 1000 * ms, 900 * ms, 100 * ms, 3, 2) == []
    assert commands_in_flight(sent, 1000 * ms, 1500 * ms, 0, 3, 2) == []


def test_noise_correlation_samples_ar1_sequences_with_unit_step_variance():
    calls = []
    c = cfg(candidates=4000, top_k=5, iterations=1, horizon=8, init_std=1.0,
            noise_correlation=0.7, action_low=(-50.0,), action_high=(50.0,))
    cem_plan(linear_model(torch.zeros(1), calls), torch.zeros(1), torch.zeros(1), c,
             generator=seeded(0))
    a = calls[0][1][:, :, 0]                                   # (N, H): mean 0, std 1
    assert a.std(0).sub(1.0).abs().max() < 0.06
    corr = [torch.corrcoef(torch.stack([a[:, k], a[:, k + d]]))[0, 1].item()
            for d in (1, 2) for k in range(0, 8 - d)]
    lag1, lag2 = corr[:7], corr[7:]
    assert all(abs(r - 0.7) < 0.05 for r in lag1) and all(abs(r - 0.49) < 0.05 for r in lag2)
    calls.clear()                                              # 0: white noise, as before
    cem_plan(linear_model(torch.zeros(1), calls), torch.zeros(1), torch.zeros(1),
             dataclasses.replace(c, noise_correlation=0.0), generator=seeded(0))
    w = calls[0][1][:, :, 0]
    assert abs(torch.corrcoef(torch.stack([w[:, 0], w[:, 1]]))[0, 1].item()) < 0.05
    with pytest.raises(ValueError, match='noise_correlation'):
        cfg(noise_correlation=1.0)


def test_cuda_budget_applies_on_cuda_devices_only():
    """config/control.yaml's cuda_budget (PlaNet-sized) replaces N, H, I, K on a cuda device;
    the CPU keeps its own. No GPU needed: the configuration only."""
    import numpy as np

    from world_model_ctrl.offline_loop import planner_params
    from world_model_ctrl.planner import cem_config
    params = planner_params(None, 'overhead')
    high = np.array([0.5, 0.5])
    cpu, gpu = cem_config(params, high, 'cpu'), cem_config(params, high, 'cuda')
    assert (gpu.candidates, gpu.horizon, gpu.iterations, gpu.top_k) == (1000, 12, 10, 100)
    assert (cpu.candidates, cpu.horizon, cpu.iterations, cpu.top_k) == \
        tuple(params[k] for k in ('candidates', 'horizon', 'iterations', 'top_k'))
    assert gpu.noise_correlation == cpu.noise_correlation and gpu.device == 'cuda'
    with pytest.raises(ValueError, match='cuda_budget'):
        cem_config({**params, 'cuda_budget': [1000, 12, 10]}, high, 'cuda:0')
