"""Cross-entropy method (CEM) planning over a learned latent model (theory.md section 2).

ROS-free: the planner node gives it the belief q(z_t) and a batched `rollout_rewards`
(the model's imagine + reward head) and publishes the first action of the result.

    result = cem_plan(model_rollout_rewards, belief_mean, belief_std, CEMConfig())
    result.action  # (A,) command to execute now
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from world_model_ctrl.configs import from_dict

# rollout_rewards(z0 (M, Z), actions (M, H, A)) -> rewards (M, H): reward of z_{t+k}, k = 1..H.
RolloutRewards = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CEMConfig:
    """Search budget and action bounds of the CEM planner."""

    candidates: int = 300  # N: action sequences sampled per iteration
    horizon: int = 12  # H: imagined steps per sequence
    iterations: int = 6  # I: refits of the sampling Gaussian per plan
    top_k: int = 30  # K: elite sequences the Gaussian is refit to
    gamma: float = 0.99  # discount on r(z_{t+k}), k = 1..H
    particles: int = 4  # P: latent samples z_t ~ q(z_t) each candidate is scored under
    action_low: tuple = field(default_factory=lambda: (-0.5, -0.5))  # (A,) per-dim lower bound
    action_high: tuple = field(default_factory=lambda: (0.5, 0.5))  # (A,) per-dim upper bound
    init_std: float | tuple = 0.3  # std of the sampling Gaussian at the start of every plan
    min_std: float | tuple = 0.05  # floor on the refit std: the search never collapses
    # (either one number for every action dimension, or one per dimension)
    warm_start: bool = True  # start from the previous plan shifted by one step (CEMPlanner)
    # Sampling noise correlated over the horizon: AR(1) with this coefficient, unit variance per
    # step (0 = white noise, PlaNet; iCEM samples coloured noise for smoother, longer moves)
    noise_correlation: float = 0.0
    device: str = "auto"  # 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...

    def __post_init__(self):
        self.action_low = tuple(float(v) for v in self.action_low)
        self.action_high = tuple(float(v) for v in self.action_high)
        if len(self.action_low) != len(self.action_high) or not self.action_low:
            raise ValueError("action_low and action_high need the same, non-zero length")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError("action_low must be below action_high in every dimension")
        if min(self.candidates, self.horizon, self.particles, self.top_k) < 1:
            raise ValueError("candidates, horizon, particles and top_k must be >= 1")
        if self.top_k > self.candidates:
            raise ValueError(f"top_k={self.top_k} exceeds candidates={self.candidates}")
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ValueError("noise_correlation must be in [0, 1)")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError("gamma must be in (0, 1]")
        for name in ("init_std", "min_std"):
            v = getattr(self, name)
            v = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)
            setattr(self, name, v)
            vals = v if isinstance(v, tuple) else (v,)
            if isinstance(v, tuple) and len(v) != len(self.action_low):
                raise ValueError(f"{name} has {len(v)} values for {len(self.action_low)} "
                                 f"action dimensions")
            if any(x < 0.0 for x in vals):
                raise ValueError("init_std and min_std must be >= 0")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @classmethod
    def from_dict(cls, d: dict) -> "CEMConfig":
        """Build from a YAML/ROS-parameter dict; unknown keys are an error, not ignored."""
        return from_dict(cls, d, 'CEMConfig keys')


@dataclass
class CEMResult:
    action: torch.Tensor  # (A,) first action of the final mean: execute this now
    plan_mean: torch.Tensor  # (H, A) final sampling mean: the warm start of the next plan
    plan_std: torch.Tensor  # (H, A) final sampling std
    predicted_return: float  # mean discounted return of the last elites (nan if no iteration)
    iterations: int  # iterations actually run


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; anything else is taken as a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def shift_plan(plan_mean: torch.Tensor, action_dim: int, pad: str = "repeat") -> torch.Tensor:
    """Warm start for the next control step: drop the executed first action, pad the end.

    plan_mean is (H, A) or flat (H*A,); returns (H, A). 'repeat' copies the last action
    (a robot that was driving keeps driving), 'zero' appends a stop command.
    """
    plan = plan_mean.reshape(-1, action_dim)  # (H, A)
    if pad == "repeat":
        tail = plan[-1:]  # (1, A)
    elif pad == "zero":
        tail = torch.zeros_like(plan[-1:])
    else:
        raise ValueError(f"pad must be 'repeat' or 'zero', not {pad!r}")
    return torch.cat([plan[1:], tail], dim=0)  # (H, A)


def _randn(shape, generator, device) -> torch.Tensor:
    # A torch.Generator is tied to one device: draw there, then move, so a cpu-seeded
    # generator gives the same numbers whatever device the search runs on.
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def draw_noise(cfg: CEMConfig, latent_dim: int, generator=None, device="cpu"):
    """All of one plan's sampling noise, in the order the search uses it (per iteration: the
    candidates' (N, H, A), then the particles' (P, Z)): ((I, N, H, A), (I, P, Z))."""
    N, H, P, A, Z = cfg.candidates, cfg.horizon, cfg.particles, cfg.action_dim, latent_dim
    eps, z = [], []
    for _ in range(cfg.iterations):
        eps.append(_randn((N, H, A), generator, device))
        z.append(_randn((P, Z), generator, device))
    if not eps:
        return torch.zeros(0, N, H, A, device=device), torch.zeros(0, P, Z, device=device)
    return torch.stack(eps), torch.stack(z)


def cem_search(rollout_rewards: RolloutRewards, mean, std, eps, z_noise, mu, sigma, low, high,
               min_std, discount, top_k: int, correlation: float):
    """The CEM iterations on pre-drawn noise (``draw_noise``): (mean, std, predicted return).

    No generator and no Python-side state: this is what ``CEMPlanner.compile`` hands to
    torch.compile (the whole search, all iterations, is one graph)."""
    N, H, A = eps.shape[1:]
    P, Z = z_noise.shape[1:]
    predicted_return = torch.full((), float("nan"), device=mean.device)
    for i in range(eps.shape[0]):
        e = eps[i]
        if correlation > 0:
            c = correlation
            steps = [e[:, 0]]
            for k in range(1, H):        # eps_k = c eps_{k-1} + sqrt(1 - c^2) xi_k
                steps.append(c * steps[-1] + (1 - c * c) ** 0.5 * e[:, k])
            e = torch.stack(steps, 1)
        actions = torch.clamp(mean + std * e, low, high)  # (N, H, A)
        # The same P particles for every candidate (common random numbers): candidates
        # are ranked on their actions, not on which latent draws they happened to get.
        z0 = mu + sigma * z_noise[i]  # (P, Z)
        z0_rows = z0.expand(N, P, Z).reshape(N * P, Z)  # (M, Z)
        action_rows = actions.unsqueeze(1).expand(N, P, H, A).reshape(N * P, H, A)  # (M, H, A)

        rewards = rollout_rewards(z0_rows, action_rows)  # (M, H)
        returns = (rewards.reshape(N, P, H).float() * discount).sum(-1).mean(1)  # (N,)

        top_returns, top_idx = torch.topk(returns, top_k)  # (K,)
        elites = actions[top_idx]  # (K, H, A)
        mean = elites.mean(0)  # (H, A)
        std = torch.maximum(elites.std(0, unbiased=False), min_std)  # (H, A)
        predicted_return = top_returns.mean()  # stays a tensor: no device sync per iteration
    return mean, std, predicted_return


@torch.no_grad()
def cem_plan(
    rollout_rewards: RolloutRewards,
    belief_mean: torch.Tensor,
    belief_std: torch.Tensor,
    cfg: CEMConfig,
    init_mean: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    search=cem_search,
) -> CEMResult:
    """Maximise E[sum_k gamma^k r(z_{t+k})] over an action sequence with CEM.

    belief_mean, belief_std: (Z,) diagonal Gaussian q(z_t). init_mean: (H, A) warm start
    (default: middle of the action box). One rollout_rewards call per iteration with
    M = N*P rows: every candidate under every particle, batched. ``search``: ``cem_search``
    or a compiled one (``CEMPlanner.compile``), called with this plan's tensors.
    """
    device = resolve_device(cfg.device)
    H, A = cfg.horizon, cfg.action_dim
    low = torch.tensor(cfg.action_low, device=device)  # (A,)
    high = torch.tensor(cfg.action_high, device=device)  # (A,)
    mu = belief_mean.to(device=device, dtype=torch.float32).reshape(-1)  # (Z,)
    sigma = belief_std.to(device=device, dtype=torch.float32).reshape(-1)  # (Z,)

    if init_mean is None:
        mean = ((low + high) / 2).expand(H, A).clone()  # (H, A)
    else:
        mean = init_mean.to(device=device, dtype=torch.float32).reshape(H, A)
        mean = torch.clamp(mean, low, high)
    std = torch.as_tensor(cfg.init_std, dtype=torch.float32, device=device).expand(H, A)
    std = std.contiguous()
    min_std = torch.as_tensor(cfg.min_std, dtype=torch.float32, device=device)  # () or (A,)
    discount = cfg.gamma ** torch.arange(1, H + 1, device=device, dtype=torch.float32)  # (H,)
    eps, z_noise = draw_noise(cfg, mu.shape[0], generator, device)
    mean, std, predicted_return = search(
        rollout_rewards, mean, std, eps, z_noise, mu, sigma, low, high, min_std, discount,
        cfg.top_k, cfg.noise_correlation)
    # a CUDA-graph replay reuses its output memory: the plan must outlive the next one
    mean, std = mean.clone(), std.clone()

    return CEMResult(
        action=torch.clamp(mean[0], low, high),
        plan_mean=mean,
        plan_std=std,
        predicted_return=float(predicted_return),
        iterations=cfg.iterations,
    )


class CEMPlanner:
    """Receding-horizon CEM: remembers the last plan and warm-starts the next one from it."""

    def __init__(self, cfg: Optional[CEMConfig] = None, generator=None):
        self.cfg = cfg if cfg is not None else CEMConfig()
        self.device = resolve_device(self.cfg.device)
        self.generator = generator
        self.prev_plan: Optional[torch.Tensor] = None  # (H, A) plan_mean of the last call
        self.compiled = None    # (rollout_rewards, compiled search) after a successful compile

    def plan(self, rollout_rewards: RolloutRewards, belief_mean, belief_std) -> CEMResult:
        init = None
        if self.cfg.warm_start and self.prev_plan is not None:
            init = shift_plan(self.prev_plan, self.cfg.action_dim)  # (H, A)
        search = cem_search
        if self.compiled is not None and self.compiled[0] is rollout_rewards:
            search = self.compiled[1]
        result = cem_plan(rollout_rewards, belief_mean, belief_std, self.cfg,
                          init_mean=init, generator=self.generator, search=search)
        self.prev_plan = result.plan_mean
        return result

    def reset(self, seed: Optional[int] = None):
        """Forget the previous plan (new episode, or inputs went stale); with ``seed``, also
        restart the sampling generator from it (the same episode then gets the same plans
        whatever ran before it)."""
        self.prev_plan = None
        if seed is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.manual_seed(int(seed))

    @torch.no_grad()
    def compile(self, rollout_rewards: RolloutRewards, latent_dim: int,
                atol: float = 1e-3) -> str:
        """Compile the whole search (all iterations) over ``rollout_rewards`` with
        torch.compile: inductor kernels on CPU, and on cuda also CUDA graphs (mode
        'reduce-overhead': the plan is replayed, not launched kernel by kernel). Plans with
        this ``rollout_rewards`` (the same object) then use it; others stay eager.

        Checked before use: one plan from a standard-normal belief, compiled and eager on the
        same noise, must agree within ``atol``. Anything that fails (no C compiler, an
        unsupported op, a mismatch, ``TORCH_COMPILE_DISABLE=1``) keeps the eager search.
        Compiled code is cached on disk (``compile_cache_dir``): a restart with the same model
        and budget loads it instead of compiling again. Returns one line for the log."""
        import time
        compile_cache_dir()             # before torch's compile stack reads where its cache is
        if torch._dynamo.config.disable:
            return "eager search: compiling is disabled (TORCH_COMPILE_DISABLE=1)"
        t0 = time.perf_counter()
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        cfg = self.cfg
        mu = torch.zeros(latent_dim, device=self.device)
        sigma = torch.ones(latent_dim, device=self.device)
        try:
            # Compile in this process: inductor's pool of compile workers would share the
            # node's process group, so a Ctrl-C during start-up would kill them and leave the
            # compile (and the node's shutdown) waiting on them.
            from torch._inductor import config as inductor_config
            inductor_config.compile_threads = 1

            def bound(_rollout, *args):
                return cem_search(rollout_rewards, *args)
            search = torch.compile(bound, fullgraph=True, dynamic=False, mode=mode)
            seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            eager = cem_plan(rollout_rewards, mu, sigma, cfg, generator=seeded())
            for _ in range(2):   # compiles; on cuda the second call records the graph
                fast = cem_plan(rollout_rewards, mu, sigma, cfg, generator=seeded(),
                                search=search)
        except Exception as e:  # noqa: BLE001 - any failure means: stay eager
            why = (str(e).strip().splitlines() or [""])[0][:200]
            return f"eager search: compiling failed ({type(e).__name__}: {why})"
        gap = float((fast.plan_mean - eager.plan_mean).abs().max())
        if not gap <= atol:
            return (f"eager search: the compiled search disagrees with it (plan differs by "
                    f"{gap:.2g} > {atol:g})")
        self.compiled = (rollout_rewards, search)
        return (f"compiled search ({'inductor + CUDA graphs' if mode != 'default' else 'inductor'}"
                f", {cfg.candidates} x {cfg.horizon} x {cfg.iterations} x {cfg.particles}) in "
                f"{time.perf_counter() - t0:.1f} s; matches eager within {gap:.1g}")


def compile_cache_dir() -> str:
    """Where torch.compile keeps compiled code (TORCHINDUCTOR_CACHE_DIR if set, else
    ~/.cache/world_model_ctrl/torch_compile): kept across reboots, unlike torch's /tmp
    default, so a planner restart finds it."""
    import os
    from pathlib import Path
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                                 str(default / "world_model_ctrl" / "torch_compile"))
