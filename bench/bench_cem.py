"""Benchmark cem_plan against torchrl's CEMPlanner on the same stand-in latent model.

    .venv/bin/pip install -r requirements-bench.txt   # torchrl, optional
    .venv/bin/python bench/bench_cem.py --json out/bench_cem.json

The model is an MLP transition + reward head the size of the project's latent model
(latent 32, hidden 200), so the timings are real compute, not planner bookkeeping alone.
Both planners run the same N x H x I x top-k with one particle; ours is also timed with
the config's particles, and compiled as the planner node runs it (``CEMPlanner.compile``:
the whole search through torch.compile; on cuda with CUDA graphs). Ratio = ours / torchrl
(below 1: ours is faster).
"""

import argparse
import dataclasses
import json
import statistics
import time

import torch
from torch import nn

from machine import cpu_name, machine_info, write_report  # bench/ is the script's folder

from world_model_ctrl.cem import CEMConfig, CEMPlanner, cem_plan, resolve_device

LATENT, HIDDEN, ACTION = 32, 200, 2
NODE = (240, 10, 3, 12)   # the planner node's N, H, I, top-k (config/control.yaml)


class StandInModel(nn.Module):
    """Deterministic latent model: z' = z + f(z, a), r = g(z'). Weights are random."""

    def __init__(self):
        super().__init__()
        self.transition = nn.Sequential(
            nn.Linear(LATENT + ACTION, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, HIDDEN), nn.ELU(),
            nn.Linear(HIDDEN, LATENT))
        self.reward = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, 1))

    def step(self, z, a):  # (M, Z), (M, A) -> (M, Z)
        return z + self.transition(torch.cat([z, a], -1))

    def rollout_rewards(self, z0, actions):  # (M, Z), (M, H, A) -> (M, H)
        z, rewards = z0, []
        for k in range(actions.shape[1]):  # one batched op per horizon step
            z = self.step(z, actions[:, k])
            rewards.append(self.reward(z).squeeze(-1))
        return torch.stack(rewards, 1)


def make_torchrl_planner(model, cfg, device):
    """torchrl's CEMPlanner over the same model wrapped as a ModelBasedEnvBase."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs.model_based import ModelBasedEnvBase
    from torchrl.modules import CEMPlanner, WorldModelWrapper

    class Step(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z, a):
            return self.m.step(z, a)

    class LatentEnv(ModelBasedEnvBase):
        def __init__(self, world_model):
            super().__init__(world_model, device=device)
            self.state_spec = Composite(latent=Unbounded((LATENT,)))
            self.observation_spec = Composite(latent=Unbounded((LATENT,)))
            self.action_spec = Bounded(low=torch.tensor(cfg.action_low),
                                       high=torch.tensor(cfg.action_high), shape=(ACTION,))
            self.reward_spec = Unbounded((1,))

        def _reset(self, tensordict=None, **kwargs):
            td = TensorDict({}, batch_size=self.batch_size, device=self.device)
            return td.update(self.full_observation_spec.zero())

    world_model = WorldModelWrapper(
        TensorDictModule(Step(model), in_keys=["latent", "action"], out_keys=["latent"]),
        TensorDictModule(model.reward, in_keys=["latent"], out_keys=["reward"]),
    )
    env = LatentEnv(world_model)
    planner = CEMPlanner(env, planning_horizon=cfg.horizon, optim_steps=cfg.iterations,
                         num_candidates=cfg.candidates, top_k=cfg.top_k)
    return planner


def time_ms(fns, device, warmup, runs):
    """p50/p99 wall time of each fn in ms. Runs are interleaved (a, b, a, b, ...) so that
    load from other processes on a shared machine hits every contender alike."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    samples = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, xs in samples.items():
        xs.sort()
        p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
        out[name] = {"p50": round(statistics.median(xs), 3), "p99": round(p99, 3), "runs": runs}
    return out


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def bench_device(device, configs, warmup, runs, compiled=True):
    torch.manual_seed(0)
    model = StandInModel().to(device).eval()
    belief_mean = torch.zeros(LATENT, device=device)
    belief_std = torch.full((LATENT,), 0.1, device=device)
    rows = []
    for name, cfg in configs.items():
        cfg = dataclasses.replace(cfg, device=str(device))
        one = dataclasses.replace(cfg, particles=1)  # torchrl has no particles: same work
        row = {"config": name, "device": str(device), "device_name": device_name(device),
               "N": cfg.candidates, "H": cfg.horizon, "I": cfg.iterations, "top_k": cfg.top_k,
               "particles": cfg.particles}
        fns = {
            "ours_ms": lambda: cem_plan(model.rollout_rewards, belief_mean, belief_std, cfg),
            "ours_1_particle_ms": lambda: cem_plan(
                model.rollout_rewards, belief_mean, belief_std, one),
        }
        if compiled:
            # the planner node's path: the whole search compiled (CEMPlanner.compile), plans
            # warm-started from the last one as in the node
            cem = CEMPlanner(one)
            row["compile"] = cem.compile(model.rollout_rewards, LATENT)
            print(row["compile"], flush=True)
            if cem.compiled is not None:
                fns["ours_compiled_1_particle_ms"] = lambda: cem.plan(
                    model.rollout_rewards, belief_mean, belief_std)
        try:
            planner = make_torchrl_planner(model, one, device)
        except ImportError as e:
            row["torchrl"] = f"unavailable ({e})"
        else:
            from tensordict import TensorDict
            td = TensorDict({"latent": belief_mean.clone()}, batch_size=[], device=device)

            def run_torchrl():
                with torch.no_grad():
                    planner(td.clone())
            fns["torchrl_ms"] = run_torchrl
        row.update(time_ms(fns, device, warmup, runs))
        if "torchrl_ms" in row:
            row["ratio_ours_over_torchrl"] = round(
                row["ours_1_particle_ms"]["p50"] / row["torchrl_ms"]["p50"], 3)
            if "ours_compiled_1_particle_ms" in row:
                row["ratio_compiled_over_torchrl"] = round(
                    row["ours_compiled_1_particle_ms"]["p50"] / row["torchrl_ms"]["p50"], 3)
        rows.append(row)
        print(json.dumps(row))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write results here")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--devices", default="cpu,cuda", help="those available are run")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the compiled search (torch.compile, 20-60 s per budget)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    default = CEMConfig()
    configs = {
        "1000x12x10": CEMConfig(candidates=1000, horizon=12, iterations=10, top_k=100,
                                particles=default.particles),
        "default": default,
        # the planner node's default budget (config/control.yaml)
        "node": CEMConfig(candidates=NODE[0], horizon=NODE[1], iterations=NODE[2],
                          top_k=NODE[3], noise_correlation=0.7, particles=1),
    }
    devices = [d for d in args.devices.split(",")
               if d == "cpu" or (d.startswith("cuda") and torch.cuda.is_available())]
    try:
        import torchrl
        torchrl_version = torchrl.__version__
    except ImportError:
        torchrl_version = None
        print("torchrl is unavailable: timing ours only (pip install -r requirements-bench.txt)")

    results = []
    for d in devices:
        results += bench_device(resolve_device(d), configs, args.warmup, args.runs,
                                not args.no_compile)
    report = {
        "benchmark": "cem_plan vs torchrl.modules.planners.CEMPlanner",
        "machine": {**machine_info(), "torchrl": torchrl_version},
        "model": {"latent": LATENT, "hidden": HIDDEN, "action": ACTION},
        "note": "ratio = ours (1 particle) / torchrl p50, same N/H/I/top_k; < 1: ours faster",
        "results": results,
    }
    write_report(report, args.json)
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
