"""Goals from a picture (issue 14): a learned distance between latent states, in control steps.

The SSM's latent distances are not shaped far from a state (docs/benchmarks.md: Euclidean or
Mahalanobis distance to a goal's belief reached only goals within about 0.5 m). So the planner
scores imagined states with a *goal head* trained on the same bags, self-supervised (no reward,
no pose): an embedding e(z) whose Euclidean distances approximate the number of control steps
between two states, learned as in quasimetric RL (Wang et al., 2023) with a symmetric metric:

    maximise  E_{random pairs a, b} min(||e(z_a) - e(z_b)||, cap)
    s.t.      ||e(z_t) - e(z_{t+1})|| <= 1   for every recorded transition

The largest metric that no recorded step stretches beyond 1 is the shortest-path distance in
steps, so far goals keep a slope the planner can follow. The metric is fitted on the recorded
frames' filtered beliefs (``metric_latent``); the other latents the planner meets, goal-image
beliefs (``one_frame_belief``), imagined states (the prior's mean path under the recorded
commands, what CEM scores) and filtered beliefs themselves, reach it through a projection p
fitted by regression onto the same frame's filtered belief: distance = ||e(p(a)) - e(p(b))||.

The head rides inside the SSM checkpoint (``extra['goal_head']``): it is only valid for the
latents of the model it was trained on, so the two never travel apart (`wmc train-goal`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from world_model_ctrl.checkpoint import check_state_dict
from world_model_ctrl.configs import from_dict
from world_model_ctrl.ssm import WorldModel, images_to_tensor

EXTRA_KEY = 'goal_head'


@dataclass
class GoalHeadConfig:
    latent_dim: int
    hidden: int = 128
    embed_dim: int = 16
    goal_frames: int = 1          # a goal image is filtered this many times, standing still

    @classmethod
    def from_dict(cls, d: dict) -> 'GoalHeadConfig':
        return from_dict(cls, d, 'GoalHeadConfig keys')


@dataclass
class GoalTrainConfig:
    steps: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    imagine_horizon: int = 10     # imagined states up to this many steps ahead (CEM's horizon)
    # which beliefs of the recorded frames the metric is fitted on: 'filtered' (what the
    # belief node gives, what the SSM was trained to produce) or 'goal' (goal-image beliefs);
    # the other kinds reach it through the projection
    metric_latent: str = 'filtered'
    constraint_weight: float = 100.0   # on relu(step distance - 1)^2
    cap: float = 100.0            # steps: random pairs are pushed apart up to this
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> 'GoalTrainConfig':
        return from_dict(cls, d, 'GoalTrainConfig keys')


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                         nn.Linear(hidden, out))


class GoalHead(nn.Module):
    """Steps between latent states: ||e(p(a)) - e(p(b))||.

    p projects any latent (filtered, imagined) onto what one frame alone would give there (a
    residual MLP fitted by regression), e embeds such one-frame latents in a space whose
    Euclidean distances count control steps (module docstring). Kept apart so that the metric
    is learned on clean one-frame states only: fitting imagined states into the metric itself
    flattened it (docs/benchmarks.md, goal distance options).
    """

    def __init__(self, cfg: GoalHeadConfig):
        super().__init__()
        self.config = cfg
        self.project = _mlp(cfg.latent_dim, cfg.hidden, cfg.latent_dim)
        self.net = _mlp(cfg.latent_dim, cfg.hidden, cfg.embed_dim)

    def projected(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.project(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Embedding (..., K) of latent states (..., Z) of any kind."""
        return self.net(self.projected(z))

    def distance(self, z: torch.Tensor, goal_embedding: torch.Tensor) -> torch.Tensor:
        """Steps from latent states z (..., Z) to the goal embedded as (K,): (...)."""
        return (self(z) - goal_embedding).pow(2).sum(-1).add(1e-8).sqrt()

    def to_extra(self, train: Optional[dict] = None) -> dict:
        return {'config': asdict(self.config),
                'state_dict': {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                'train': dict(train or {})}

    @classmethod
    def from_model(cls, model: WorldModel, path='the checkpoint') -> 'GoalHead':
        """The head stored with ``model`` (loaded by ``WorldModel.from_checkpoint``)."""
        stored = (getattr(model, 'checkpoint_extra', None) or {}).get(EXTRA_KEY)
        if not stored:
            raise ValueError(f'{path} has no goal head: planning toward a goal image needs one '
                             f'(train it with `wmc train-goal --ckpt {path} --bags BAG...`)')
        cfg = GoalHeadConfig.from_dict(stored['config'])
        if cfg.latent_dim != model.config.latent_dim:
            raise ValueError(f'{path}: goal head latent_dim {cfg.latent_dim} != the model\'s '
                             f'{model.config.latent_dim}')
        head = cls(cfg)
        check_state_dict(head.state_dict(), stored['state_dict'], path, 'goal head')
        head.load_state_dict(stored['state_dict'])
        return head.to(next(model.parameters()).device).eval()


@torch.no_grad()
def one_frame_belief(model: WorldModel, images, frames: int = 1) -> torch.Tensor:
    """Posterior mean after seeing each image ``frames`` times with zero commands (the robot
    standing there), from no history: (B, Z). What a goal image means to the model.
    ``images``: (B, H, W, 3) uint8 or (B, C, S, S) float in [0, 1]."""
    x = images if torch.is_tensor(images) and images.is_floating_point() else \
        images_to_tensor(images)
    x = x.to(next(model.parameters()).device)
    h, zero = None, torch.zeros(x.shape[0], model.config.action_dim, device=x.device)
    for _ in range(max(1, int(frames))):
        h, mean, _ = model.step(h, x, zero)
    return mean


@torch.no_grad()
def goal_embedding(model: WorldModel, head: 'GoalHead', images) -> torch.Tensor:
    """The goal head's embedding (B, K) of goal images (B, H, W, 3) uint8 at the model's size."""
    return head(one_frame_belief(model, images, head.config.goal_frames))


def goal_scores(model: WorldModel, head: GoalHead, goal_embedding: torch.Tensor,
                sample: bool = False, jump_penalty: float = 0.0) -> Callable:
    """CEM's score function for a goal: (z0 (M, Z), actions (M, H, A)) -> (M, H) =
    -steps from each imagined state to the goal (higher is better, as rewards).

    ``jump_penalty`` > 0: an imagined step that moves more than one step in the head's metric
    is one no recorded step made (the head was fitted so that none does): where the model's
    imagination breaks down (pushed against a wall, it imagines the robot jumping toward the
    room's centre) a plan would otherwise gain by it. Each such excess, times the penalty, is
    added to the distance of that step and every later one.
    """
    def rollout(z0, actions):
        z = model.imagine(z0, actions, sample=sample)                   # (M, H, Z)
        e = head(torch.cat([z0[:, None], z], 1))                        # (M, H+1, K)
        d = (e[:, 1:] - goal_embedding).pow(2).sum(-1).add(1e-8).sqrt()  # (M, H)
        if jump_penalty > 0:
            step = (e[:, 1:] - e[:, :-1]).pow(2).sum(-1).add(1e-8).sqrt()
            d = d + jump_penalty * torch.relu(step - 1.0).cumsum(1)
        return -d
    return rollout


def read_goal_file(path, image_size: int) -> np.ndarray:
    """An image file (PNG, JPEG, ... as OpenCV reads it) -> (S, S, 3) uint8 RGB, resized as
    camera frames are (``data.image_to_rgb``)."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read goal image file {str(path)!r} (missing, or not an image '
                         f'OpenCV can decode)')
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[:2] != (image_size, image_size):
        img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.uint8)


# --- training --------------------------------------------------------------------------------

@torch.no_grad()
def _latents(model: WorldModel, episodes, horizon: int, device, goal_frames: int = 1) -> dict:
    """Per frame: goal-image (``one_frame_belief``) and filtered beliefs; per (frame, k):
    imagined k steps ahead."""
    one, filt, nxt, imag, imag_of, end = [], [], [], [], [], []
    base = 0
    for ep in episodes:
        x = images_to_tensor(ep.images).to(device)                    # (T, C, S, S)
        a = torch.from_numpy(ep.actions).float().to(device)          # (T, A)
        T = x.shape[0]
        one.append(one_frame_belief(model, x, goal_frames))
        post = model.observe(x[None], a[None])
        filt.append(post.mean[0])
        n = torch.arange(base, base + T)
        nxt.append(torch.where(torch.arange(T) < T - 1, n + 1, torch.full_like(n, -1)))
        end.append(torch.full_like(n, base + T - 1))
        for k in range(1, min(horizon, T - 1) + 1):
            # frame t+k was taken under a_{t+k-1} = actions[t+k]
            starts = torch.arange(0, T - k)
            acts = torch.stack([a[s + 1:s + k + 1] for s in starts.tolist()])   # (n, k, A)
            z = model.imagine(post.mean[0, starts], acts, sample=False)[:, -1]
            imag.append(z)
            imag_of.append(starts + k + base)
        base += T
    return {'one': torch.cat(one), 'filt': torch.cat(filt), 'next': torch.cat(nxt),
            'end': torch.cat(end),
            'imag': torch.cat(imag) if imag else torch.zeros(0, model.config.latent_dim),
            'imag_of': torch.cat(imag_of) if imag_of else torch.zeros(0, dtype=torch.long)}


def step_distances(head: GoalHead, lat: dict) -> np.ndarray:
    """Distances the head's metric gives each recorded transition (``lat['one']``: the latents
    it was fitted on): about <= 1 once trained."""
    valid = torch.nonzero(lat['next'] >= 0).squeeze(1)
    with torch.no_grad():
        d = (head.net(lat['one'][valid]) -
             head.net(lat['one'][lat['next'][valid]])).norm(dim=-1)
    return d.cpu().numpy()


def train_goal_head(model: WorldModel, episodes, cfg: Optional[GoalTrainConfig] = None,
                    head_cfg: Optional[GoalHeadConfig] = None, device='cpu',
                    progress: bool = True) -> tuple[GoalHead, dict]:
    """Fit a goal head to ``model``'s latents of ``episodes`` (module docstring)."""
    from tqdm import tqdm
    cfg = cfg or GoalTrainConfig()
    torch.manual_seed(cfg.seed)
    model = model.to(device).eval()
    head = GoalHead(head_cfg or GoalHeadConfig(latent_dim=model.config.latent_dim)).to(device)
    t0 = time.monotonic()
    if cfg.metric_latent not in ('filtered', 'goal'):
        raise ValueError(f"metric_latent must be 'filtered' or 'goal', got "
                         f"{cfg.metric_latent!r}")
    lat = _latents(model, episodes, cfg.imagine_horizon, device, head.config.goal_frames)
    valid = torch.nonzero(lat['next'] >= 0).squeeze(1)
    if len(valid) == 0:
        raise ValueError('no transitions: episodes need at least 2 frames')
    n_frames, n_imag = len(lat['one']), len(lat['imag'])
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    B = cfg.batch_size
    one = lat['filt'] if cfg.metric_latent == 'filtered' else lat['one']
    # the projection's regression pairs: (any latent of a frame, that frame's metric latent)
    src = torch.cat([lat['one'], lat['filt'], lat['imag']])
    dst = torch.cat([torch.arange(n_frames), torch.arange(n_frames), lat['imag_of']])

    def pick(n):
        return torch.randint(0, n, (B,), generator=g)

    def dist(a, b):
        return (head.net(a) - head.net(b)).pow(2).sum(-1).add(1e-8).sqrt()

    history = []
    bar = tqdm(range(cfg.steps), desc='train goal head', unit='step', disable=not progress)
    for step in bar:
        t = valid[pick(len(valid))]
        constraint = torch.relu(dist(one[t], one[lat['next'][t]]) - 1.0).pow(2).mean()
        spread = torch.clamp(dist(one[pick(n_frames)], one[pick(n_frames)]), max=cfg.cap).mean()
        k = torch.randint(0, len(src), (2 * B,), generator=g)
        project = (head.projected(src[k]) - one[dst[k]]).pow(2).sum(-1).mean()
        loss = -spread + cfg.constraint_weight * constraint + project
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append({'step': step, 'spread': spread.item(),
                            'constraint': constraint.item(), 'project': project.item()})
            bar.set_postfix(spread=f'{spread.item():.1f}', project=f'{project.item():.2f}')
    head.eval()
    d = step_distances(head, {**lat, 'one': one})
    with torch.no_grad():
        err = {name: float((head.projected(z) - one[idx]).pow(2).sum(-1).mean())
               for name, z, idx in (('filtered', lat['filt'], torch.arange(n_frames)),
                                    ('goal', lat['one'], torch.arange(n_frames)),
                                    ('imagined', lat['imag'], lat['imag_of']))
               if len(z)}
    metrics = {'projection_mse': err, 'frames': n_frames, 'transitions': int(len(valid)), 'imagined': n_imag,
               'episodes': len(episodes), 'train_s': round(time.monotonic() - t0, 1),
               'step_distance_p50': float(np.percentile(d, 50)),
               'step_distance_p99': float(np.percentile(d, 99)),
               'config': asdict(cfg), 'head': asdict(head.config), 'history': history[-1:]}
    return head, metrics


def train_goal(ckpt, bags, out, overrides: Optional[dict] = None, force: bool = False,
               device='cpu', progress: bool = True) -> dict:
    """`wmc train-goal`: fit a goal head to checkpoint ``ckpt``'s latents of ``bags`` and
    write ``out``: the same model with the head in its extra (no optimizer state)."""
    from world_model_ctrl.checkpoint import export_checkpoint
    from world_model_ctrl.data import DataConfig, load_episodes
    overrides = dict(overrides or {})
    head_keys = {k: overrides.pop(k) for k in ('hidden', 'embed_dim', 'goal_frames')
                 if k in overrides}
    cfg = GoalTrainConfig.from_dict(overrides)
    model = WorldModel.from_checkpoint(ckpt, device=device)
    head_cfg = GoalHeadConfig(latent_dim=model.config.latent_dim, **head_keys)
    data = (model.checkpoint_extra or {}).get('data')
    dcfg = DataConfig.from_dict(data) if data else DataConfig(image_size=model.config.image_size)
    episodes = load_episodes(bags, dcfg, progress=progress)
    head, metrics = train_goal_head(model, episodes, cfg, head_cfg, device, progress)
    metrics['bags'] = [str(b) for b in bags]
    export_checkpoint(ckpt, out, overwrite=force, add={EXTRA_KEY: head.to_extra(metrics)})
    return metrics


__all__ = ['read_goal_file', 'GoalHead', 'GoalHeadConfig', 'GoalTrainConfig', 'EXTRA_KEY', 'one_frame_belief',
           'goal_scores', 'goal_embedding', 'train_goal_head', 'train_goal', 'step_distances']
