"""ROS-free exploration policies for data collection (velocity actions in a box).

A world model learns only what the data shows, so the default ``mix`` switches every few steps
between uniform noise (coverage of actions), Ornstein-Uhlenbeck noise (smooth long motions that
reach the walls) and a noisy goal-seeker (so the goal region, where the planner operates, is
well covered). The goal-seeker reads ground truth: fine for collection, never a model input.
"""
from __future__ import annotations

import numpy as np

POLICIES = ('random', 'ou', 'goal', 'mix')


class Policy:
    def __init__(self, max_speed: float, rng: np.random.Generator):
        self.max_speed, self.rng = max_speed, rng

    def reset(self) -> None:
        pass

    def act(self, pos: np.ndarray | None, goal: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def clip(self, a: np.ndarray) -> np.ndarray:
        return np.clip(a, -self.max_speed, self.max_speed)


class RandomPolicy(Policy):
    """Uniform actions in the box."""

    def act(self, pos, goal):
        return self.rng.uniform(-self.max_speed, self.max_speed, 2)


class OUPolicy(Policy):
    """Ornstein-Uhlenbeck process: a_{t+1} = a_t - theta a_t + sigma N(0, I), clipped."""

    def __init__(self, max_speed, rng, theta: float = 0.15, sigma: float = 0.3):
        super().__init__(max_speed, rng)
        self.theta, self.sigma = theta, sigma * max_speed
        self.a = np.zeros(2)

    def reset(self):
        self.a = self.rng.uniform(-self.max_speed, self.max_speed, 2)

    def act(self, pos, goal):
        self.a = self.clip(self.a - self.theta * self.a + self.sigma * self.rng.normal(size=2))
        return self.a


class GoalSeekerPolicy(Policy):
    """Towards the (true) goal at a random speed, plus Gaussian noise."""

    def __init__(self, max_speed, rng, noise: float = 0.4):
        super().__init__(max_speed, rng)
        self.noise = noise * max_speed

    def act(self, pos, goal):
        if pos is None or goal is None:
            return self.rng.uniform(-self.max_speed, self.max_speed, 2)
        d = np.asarray(goal) - np.asarray(pos)
        speed = self.rng.uniform(0.3, 1.0) * self.max_speed
        a = d / max(np.abs(d).max(), 1e-9) * min(speed, np.abs(d).max() * 10)
        return self.clip(a + self.noise * self.rng.normal(size=2))


class MixPolicy(Policy):
    """Switch between random, OU and goal-seeking every ``segment`` steps."""

    def __init__(self, max_speed, rng, segment: int = 8, weights=(0.3, 0.3, 0.4)):
        super().__init__(max_speed, rng)
        self.parts = [RandomPolicy(max_speed, rng), OUPolicy(max_speed, rng),
                      GoalSeekerPolicy(max_speed, rng)]
        self.segment, self.weights = segment, np.asarray(weights) / np.sum(weights)
        self.t, self.current = 0, self.parts[0]

    def reset(self):
        self.t = 0
        for p in self.parts:
            p.reset()

    def act(self, pos, goal):
        if self.t % self.segment == 0:
            self.current = self.parts[self.rng.choice(len(self.parts), p=self.weights)]
        self.t += 1
        return self.current.act(pos, goal)


def make_policy(name: str, max_speed: float, seed: int | None = None) -> Policy:
    rng = np.random.default_rng(seed)
    table = {'random': RandomPolicy, 'ou': OUPolicy, 'goal': GoalSeekerPolicy, 'mix': MixPolicy}
    if name not in table:
        raise ValueError(f'unknown policy {name!r}; choose from {", ".join(POLICIES)}')
    return table[name](max_speed, rng)
