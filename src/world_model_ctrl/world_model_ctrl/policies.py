"""ROS-free exploration policies for data collection (velocity actions in a box).

A world model learns only what the data shows, so the default ``mix`` switches every few steps
between uniform noise (coverage of actions), Ornstein-Uhlenbeck noise (smooth long motions that
reach the walls) and a noisy goal-seeker (so the goal region, where the planner operates, is
well covered). The goal-seeker reads ground truth: fine for collection, never a model input.

Two action spaces: the overhead world's holonomic (vx, vy) (``Policy`` and its subclasses,
``act(pos, goal)``) and the onboard world's differential drive (v, w) = (linear.x, angular.z)
(``DrivePolicy`` and its subclasses, ``act(pos, goal, heading)``). A forward camera sees only
what the robot faces, so the drive policies also make sure that every heading is seen from many
places: ``turns`` alternates turns in place by large random angles with forward runs, and backs
off and turns when it bumps into a wall.
"""
from __future__ import annotations

import math

import numpy as np

POLICIES = ('random', 'ou', 'goal', 'mix', 'waypoints')
DRIVE_POLICIES = ('random', 'ou', 'goal', 'turns', 'mix', 'waypoints')
# The default room's floor (room_sim: 2 m, 0.1 m walls) less a robot's half-size: where
# ``waypoints`` draws its targets
FLOOR = (0.2, 1.8)
WORLDS = ('overhead', 'onboard')
DEFAULT_TURN_RATE = 3.0        # rad/s: room_sim's onboard max_turn_rate


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


class _Waypoints:
    """Seeks a waypoint drawn uniformly over the floor instead of the goal, and draws the next
    when within ``reach`` m or after ``patience`` steps: visits every part of the room about
    equally (``mix`` favours the goal region), what a goal-image planner needs (issue 14)."""

    def _waypoints(self, floor=FLOOR, reach: float = 0.08, patience: int = 40) -> None:
        self.floor, self.reach, self.patience = floor, reach, patience
        self.target, self.age = None, 0

    def reset(self):
        self.target, self.age = None, 0

    def _target(self, pos):
        if pos is None:
            return None
        if (self.target is None or self.age >= self.patience
                or np.linalg.norm(np.asarray(pos) - self.target) < self.reach):
            # arcsine (Beta(1/2, 1/2)) per axis: more waypoints near the walls, where a
            # uniform draw leaves the robot least often (it passes the middle on every run)
            lo, hi = self.floor
            self.target, self.age = lo + (hi - lo) * self.rng.beta(0.5, 0.5, size=2), 0
        self.age += 1
        return self.target


class WaypointPolicy(_Waypoints, GoalSeekerPolicy):
    """(vx, vy) toward random waypoints (``_Waypoints``) at a random speed, plus noise."""

    def __init__(self, max_speed, rng, noise: float = 0.2):
        GoalSeekerPolicy.__init__(self, max_speed, rng, noise)
        self._waypoints()

    def act(self, pos, goal):
        return GoalSeekerPolicy.act(self, pos, self._target(pos))


class _Switching:
    """A mix of policies: every ``segment`` steps one of ``parts`` is drawn (``weights``)."""

    def _mix(self, parts, segment: int, weights) -> None:
        self.parts, self.segment = parts, segment
        self.weights = np.asarray(weights) / np.sum(weights)
        self.t, self.current = 0, parts[0]

    def reset(self):
        self.t = 0
        for p in self.parts:
            p.reset()

    def _part(self):
        """The policy acting this step."""
        if self.t % self.segment == 0:
            self.current = self.parts[self.rng.choice(len(self.parts), p=self.weights)]
        self.t += 1
        return self.current


class MixPolicy(_Switching, Policy):
    """Switch between random, OU and goal-seeking every ``segment`` steps."""

    def __init__(self, max_speed, rng, segment: int = 8, weights=(0.3, 0.3, 0.4)):
        super().__init__(max_speed, rng)
        self._mix([RandomPolicy(max_speed, rng), OUPolicy(max_speed, rng),
                   GoalSeekerPolicy(max_speed, rng)], segment, weights)

    def act(self, pos, goal):
        return self._part().act(pos, goal)


# -- differential drive: (v, w) = (linear.x m/s, angular.z rad/s) --------------------------------
def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class DrivePolicy:
    """(v, w) in the box [-limits, limits] for a differential-drive robot."""

    def __init__(self, limits, rng: np.random.Generator, dt: float = 0.1):
        self.limits = np.asarray(limits, dtype=np.float64).reshape(2)
        if not np.all(self.limits > 0):
            raise ValueError(f'action limits must be positive (v_max, w_max), got {limits}')
        self.rng, self.dt = rng, dt

    def reset(self) -> None:
        pass

    def act(self, pos: np.ndarray | None, goal: np.ndarray | None,
            heading: float | None = None) -> np.ndarray:
        raise NotImplementedError

    def clip(self, a) -> np.ndarray:
        return np.clip(np.asarray(a, dtype=np.float64), -self.limits, self.limits)


class DriveRandomPolicy(DrivePolicy):
    """Uniform (v, w) in the box."""

    def act(self, pos, goal, heading=None):
        return self.rng.uniform(-self.limits, self.limits)


class DriveOUPolicy(DrivePolicy):
    """Ornstein-Uhlenbeck process about a slow forward drive:
    a_{t+1} = a_t + theta (mu - a_t) + sigma N(0, I), mu = (0.3 v_max, 0), clipped."""

    def __init__(self, limits, rng, dt=0.1, theta: float = 0.15, sigma: float = 0.3):
        super().__init__(limits, rng, dt)
        self.theta, self.sigma = theta, sigma * self.limits
        self.mu = np.array([0.3, 0.0]) * self.limits
        self.a = self.mu.copy()

    def reset(self):
        self.a = self.rng.uniform(-self.limits, self.limits)

    def act(self, pos, goal, heading=None):
        self.a = self.clip(self.a + self.theta * (self.mu - self.a)
                           + self.sigma * self.rng.normal(size=2))
        return self.a


class TurnsPolicy(DrivePolicy):
    """Random turns in place (45-180 deg, either way, at 50-100 % of w_max) alternating with
    forward runs (5-20 steps at 40-100 % of v_max, slightly curved; now and then a short
    reverse). When the pose shows that the last forward command did not move the robot (a wall),
    it backs off for a step and turns. Without a pose it runs on timing alone."""

    def __init__(self, limits, rng, dt=0.1):
        super().__init__(limits, rng, dt)
        self.plan: list = []            # queued actions
        self.last_pos = self.last_v = None

    def reset(self):
        self.plan, self.last_pos, self.last_v = [], None, None

    def _turn(self, min_angle=math.pi / 3):
        w = self.rng.uniform(0.5, 1.0) * self.limits[1] * self.rng.choice([-1.0, 1.0])
        n = max(1, round(self.rng.uniform(min_angle, 1.5 * math.pi) / (abs(w) * self.dt)))
        return [np.array([0.0, w])] * n

    def _run(self):
        v_max, w_max = self.limits
        if self.rng.random() < 0.15:    # a short reverse: the model sees backing up too
            v, n = -self.rng.uniform(0.3, 0.7) * v_max, int(self.rng.integers(2, 5))
        else:
            v, n = self.rng.uniform(0.4, 1.0) * v_max, int(self.rng.integers(4, 16))
        w = self.rng.normal(0.0, 0.1) * w_max
        return [np.array([v, w])] * n

    def _bumped(self, pos) -> bool:
        if pos is None or self.last_pos is None or self.last_v is None:
            return False
        expected = abs(self.last_v) * self.dt
        moved = float(np.linalg.norm(np.asarray(pos) - self.last_pos))
        return expected > 0.005 and moved < 0.7 * expected

    def act(self, pos, goal, heading=None):
        if self._bumped(pos):
            back = np.array([-np.sign(self.last_v) * 0.5 * self.limits[0], 0.0])
            self.plan = [back] + self._turn(min_angle=math.pi / 2)
        if not self.plan:
            self.plan = self._turn() if self.rng.random() < 0.5 else self._run()
        a = self.clip(self.plan.pop(0))
        self.last_pos = None if pos is None else np.array(pos, dtype=np.float64)
        self.last_v = float(a[0])
        return a


class DriveGoalPolicy(DrivePolicy):
    """Turn toward the (true) goal while driving, as the oracle, with a random gain and speed
    and Gaussian noise; random actions without a pose, heading or goal."""

    def __init__(self, limits, rng, dt=0.1, noise: float = 0.25):
        super().__init__(limits, rng, dt)
        self.noise = noise * self.limits

    def act(self, pos, goal, heading=None):
        if pos is None or goal is None or heading is None:
            return self.rng.uniform(-self.limits, self.limits)
        d = np.asarray(goal, dtype=np.float64) - np.asarray(pos, dtype=np.float64)
        err = _wrap(math.atan2(d[1], d[0]) - heading)
        w = self.rng.uniform(0.3, 1.0) * err / self.dt
        speed = min(self.rng.uniform(0.3, 1.0) * self.limits[0], float(np.hypot(*d)) / self.dt)
        v = speed * max(0.0, math.cos(err))
        return self.clip(np.array([v, w]) + self.noise * self.rng.normal(size=2))


class DriveWaypointPolicy(_Waypoints, DriveGoalPolicy):
    """(v, w) toward random waypoints (``_Waypoints``), turning as the goal-seeker does."""

    def __init__(self, limits, rng, dt=0.1, noise: float = 0.25):
        DriveGoalPolicy.__init__(self, limits, rng, dt, noise)
        self._waypoints()

    def act(self, pos, goal, heading=None):
        return DriveGoalPolicy.act(self, pos, self._target(pos), heading)


class DriveMixPolicy(_Switching, DrivePolicy):
    """Switch between random, OU, turns and goal-seeking every ``segment`` steps."""

    def __init__(self, limits, rng, dt=0.1, segment: int = 10,
                 weights=(0.15, 0.2, 0.4, 0.25)):
        super().__init__(limits, rng, dt)
        self._mix([DriveRandomPolicy(limits, rng, dt), DriveOUPolicy(limits, rng, dt),
                   TurnsPolicy(limits, rng, dt), DriveGoalPolicy(limits, rng, dt)],
                  segment, weights)

    def act(self, pos, goal, heading=None):
        return self._part().act(pos, goal, heading)


def make_policy(name: str, max_speed: float = 0.5, seed: int | None = None,
                world: str = 'overhead', limits=None, dt: float = 0.1):
    """An exploration policy by name for a world's action space: ``overhead`` -> a ``Policy``
    of (vx, vy) within ``max_speed`` per axis; ``onboard`` -> a ``DrivePolicy`` of (v, w)
    within ``limits`` = (v_max, w_max) (default (max_speed, DEFAULT_TURN_RATE)); ``dt`` is the
    step (frame) period, which the drive policies use to tell turns and bumps."""
    rng = np.random.default_rng(seed)
    if world == 'overhead':
        table = {'random': RandomPolicy, 'ou': OUPolicy, 'goal': GoalSeekerPolicy,
                 'mix': MixPolicy, 'waypoints': WaypointPolicy}
        if name not in table:
            raise ValueError(f'unknown policy {name!r}; choose from {", ".join(POLICIES)}')
        return table[name](max_speed, rng)
    if world != 'onboard':
        raise ValueError(f'unknown world {world!r}; choose from {", ".join(WORLDS)}')
    table = {'random': DriveRandomPolicy, 'ou': DriveOUPolicy, 'goal': DriveGoalPolicy,
             'turns': TurnsPolicy, 'mix': DriveMixPolicy, 'waypoints': DriveWaypointPolicy}
    if name not in table:
        raise ValueError(f'unknown policy {name!r} for the onboard world; choose from '
                         f'{", ".join(DRIVE_POLICIES)}')
    return table[name](limits if limits is not None else (max_speed, DEFAULT_TURN_RATE), rng,
                       dt)
