"""planner node: CEM over the learned transition and reward models -> velocity commands (MPC).

trigger=timer  plans from the latest belief at ``rate_hz`` (a real robot, realtime sim).
trigger=belief plans once per new belief (lockstep sim: each command advances the world).
Either way a watchdog thread of its own (not the executor: a long plan or a busy executor
cannot delay it) publishes zero at ``rate_hz`` while the belief is older than
``belief_timeout``, a stop request is active, or (``require_monitor``) the image monitor has
been silent for ``monitor_timeout``. Ages count from when the middleware received the message,
not from when the executor got round to it. Every command passes one gate (``publish``):
non-finite -> zero with a warning, out of bounds -> clipped, zero while the watchdog holds
(a plan that started on a fresh belief and ended on a stale one), and nothing after the final
zero on shutdown.

Stamps: a TwistStamped command (``cmd_vel_stamped``) carries the node clock's time at publishing
(sim time under use_sim_time), as a base controller (diff_drive_controller's cmd_vel_timeout)
expects; the camera may run seconds off. Which frame a command answers goes on its own topic,
``planner/answered`` (TwistStamped: that belief's header and the same twist, right after the
command), for lockstep simulators and latency tracing. Zeros that answer no frame (the watchdog,
shutdown) are on cmd_vel only.
"""
import collections
import threading
import time

import numpy as np
import torch
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32, Header
from std_srvs.srv import Trigger

from world_model_ctrl.actions import check_fields, resolve_limits, trained_spec
from world_model_ctrl.cem import CEMConfig, CEMPlanner, resolve_device
from world_model_ctrl.data import image_to_rgb
from world_model_ctrl.diagnostics import OK, WARN, Diagnostics
from world_model_ctrl.goal import GoalHead, goal_embedding, goal_scores, read_goal_file
from world_model_ctrl.messages import (belief_from_msg, check_action_fields, cmd_from_action,
                                       latched_qos, stamp_ns)
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.spin import arrival_time, require_positive, run_node, with_message_info
from world_model_ctrl.ssm import WorldModel
from world_model_ctrl.worlds import get_world
from world_model_ctrl.views import ImageView, imagined

# Defaults = config/control.yaml: chosen so planning fits the 100 ms control period on 2 CPU
# cores with the sim and belief running (docs/benchmarks.md).
CEM_PARAMS = {'candidates': 240, 'horizon': 10, 'iterations': 3, 'top_k': 12, 'gamma': 0.99,
              'particles': 1, 'init_std': 0.3, 'min_std': 0.05, 'noise_correlation': 0.0}



def cem_config(params: dict, high, device: str) -> CEMConfig:
    """CEM configured from planner parameters (``CEM_PARAMS``, ``relative_std``; on a cuda
    ``device`` N, H, I and K from ``cuda_budget`` when set; other keys are ignored) within
    +-``high``, as the planner node and `wmc eval --no-ros` run it. ``relative_std``:
    init_std and min_std are fractions of each field's limit."""
    cem = {k: params.get(k, v) for k, v in CEM_PARAMS.items()}
    budget = list(params.get('cuda_budget') or [])
    if budget and torch.device(device).type == 'cuda':   # a GPU affords PlaNet's search
        if len(budget) != 4 or not all(int(v) == v and v >= 1 for v in budget):
            raise ValueError(f'cuda_budget must be [candidates, horizon, iterations, top_k], '
                             f'positive integers, got {budget}')
        cem.update(zip(('candidates', 'horizon', 'iterations', 'top_k'), map(int, budget)))
    if params.get('relative_std', False):   # m/s and rad/s alike
        for k in ('init_std', 'min_std'):
            cem[k] = tuple(float(cem[k] * h) for h in high)
    return CEMConfig(**cem, device=device, action_low=tuple(-h for h in high),
                     action_high=tuple(high))


def cem_planner(params: dict, high, device: str) -> CEMPlanner:
    """``cem_config``'s CEM, its generator seeded from ``seed``."""
    return CEMPlanner(cem_config(params, high, device),
                      generator=torch.Generator().manual_seed(int(params.get('seed', 0))))


def episode_seed(seed: int, episode: int) -> int:
    """The CEM generator's seed for one episode: its plans depend on the planner's ``seed`` and
    the episode number only, not on how many plans the episodes before it took."""
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def exploration_rng(episode_cem_seed: int) -> np.random.Generator:
    """The exploration noise's generator for one episode, from that episode's CEM seed
    (``episode_seed``): the planner node and `wmc collect-planner` draw the same noise."""
    return np.random.default_rng([int(episode_cem_seed), 1])


def add_exploration(action: np.ndarray, noise: float, high: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """``action`` + Gaussian noise of ``noise`` x each field's limit, within the limits."""
    a = np.asarray(action, np.float64)
    return np.clip(a + noise * high * rng.standard_normal(a.shape), -high, high)


def commands_in_flight(sent, frame_ns: int, now_ns: int, step_ns: int, max_steps: int,
                       action_dim: int) -> list:
    """The commands a robot applied after a frame was taken and before one published now acts.

    A world that steps every ``step_ns`` and applies the latest command at each step has taken
    floor(age / step) steps since the frame (age = now - frame stamp): step i with the last
    command in ``sent`` ((publish time ns, action), oldest first) published by frame + i step
    (zero if none). At most ``max_steps``; none for a negative age or step.
    """
    age = now_ns - frame_ns
    if age < 0 or step_ns <= 0:
        return []
    out = []
    for i in range(1, min(int(age // step_ns), max_steps) + 1):
        tick, latest = frame_ns + i * step_ns, np.zeros(action_dim)
        for t, a in sent:
            if t <= tick:
                latest = a
        out.append(latest)
    return out


class PlannerNode(Node):
    """belief -> CEM -> cmd_vel (+ planner/answered); diagnostics on planner/plan_ms and
    planner/predicted_return."""

    def __init__(self, **kwargs):
        super().__init__('planner', **kwargs)
        self.declare_parameter('checkpoint', 'shipped')
        self.declare_parameter('world', 'overhead')   # whose model 'shipped' means
        self.declare_parameter('device', 'cpu')
        self.declare_parameter('trigger', 'timer')
        self.declare_parameter('rate_hz', 10.0)
        self.declare_parameter('belief_timeout', 0.5)
        self.declare_parameter('cmd_vel_stamped', False)
        self.declare_parameter('action_fields', ['linear.x', 'linear.y'])
        # per field (m/s, rad/s); [] = the bounds the checkpoint was trained with; lower = cap
        self.declare_parameter('action_limits', Parameter.Type.DOUBLE_ARRAY)
        self.declare_parameter('max_speed', 0.0)    # replaced by action_limits: refused if set
        self.declare_parameter('seed', 0)
        self.declare_parameter('threads', 1)
        # With the image monitor on: its planner/stop heartbeat must keep coming, or hold zero.
        self.declare_parameter('require_monitor', False)
        self.declare_parameter('monitor_timeout', 2.0)
        # Score candidates on the transition's mean path (particles carry the belief's
        # uncertainty) or on sampled transitions (PlaNet).
        self.declare_parameter('sample_transitions', False)
        # init_std/min_std in units of each action field's limit (true) or absolute (false):
        # fields of different units (m/s, rad/s) need the former
        self.declare_parameter('relative_std', False)
        # planner/imagined (rgb8): the chosen plan's decoded frames, for people (views.py)
        # trigger=timer: plan from the belief advanced through the transition (mean path) by
        # the commands applied since its frame was taken (the frame's age in model steps, from
        # its stamp and this node's clock; at most 3; none for an age below zero or above
        # belief_timeout, e.g. a camera clock that runs off)
        self.declare_parameter('compensate_latency', False)
        self.declare_parameter('publish_imagined', False)
        # Data aggregation (`wmc improve --ros`, recording a round on a robot): Gaussian noise
        # of this fraction of each field's limit on every planned command, drawn per episode
        # from (seed, episode) as `wmc collect-planner` does; 0 = none (control)
        self.declare_parameter('exploration_noise', 0.0)
        self.declare_parameter('imagined_rate_hz', 1.0)
        # What CEM maximises: 'reward' (the reward head) or 'goal_image' (minus the goal head's
        # steps to the goal: issue 14, goal.py; zero until a goal is set by the goal_image
        # topic, the planner/set_goal_from_current_view service or goal_image_file)
        self.declare_parameter('objective', 'reward')
        self.declare_parameter('goal_image_file', '')
        # torch.compile the CEM search at start-up (cached on disk; eager if it cannot)
        self.declare_parameter('compile', True)
        # on a cuda device: [candidates, horizon, iterations, top_k] instead of those above
        self.declare_parameter('cuda_budget', [1000, 12, 10, 100])
        for k, v in CEM_PARAMS.items():
            self.declare_parameter(k, v)
        p = self.get_parameter
        self.trigger = p('trigger').value
        if self.trigger not in ('timer', 'belief'):
            raise ValueError(f"trigger must be 'timer' or 'belief', got {self.trigger!r}")
        if p('max_speed').value:
            raise ValueError('parameter max_speed was replaced by action_limits (one limit per '
                             'action field, e.g. [0.5, 0.5]; [] = the trained bounds)')
        for name in ('rate_hz', 'belief_timeout', 'monitor_timeout'):
            require_positive(name, p(name).value)
        torch.set_num_threads(max(1, p('threads').value))
        torch.set_flush_denormal(True)      # denormals slow CPU kernels several-fold
        ckpt = resolve_checkpoint(p('checkpoint').value, get_world(p('world').value).checkpoint)
        self.device = resolve_device(p('device').value)
        self.model = WorldModel.from_checkpoint(ckpt, device=self.device)
        self.fields = check_action_fields(p('action_fields').value, self.model.config.action_dim)
        spec = trained_spec(self.model.checkpoint_extra)
        check_fields(self.fields, spec, ckpt)
        self.stamped = p('cmd_vel_stamped').value
        try:
            limits = list(p('action_limits').value or [])
        except ParameterUninitializedException:       # not set: the trained bounds
            limits = []
        self.high = resolve_limits(self.fields, limits, spec, ckpt)
        self.low = -self.high
        self.cem = cem_planner({k: p(k).value for k in (*CEM_PARAMS, 'relative_std', 'seed',
                                                          'cuda_budget')},
                               self.high, str(self.device))
        self.timeout = p('belief_timeout').value
        self.noise = float(p('exploration_noise').value)
        if not self.noise >= 0:
            raise ValueError(f'exploration_noise must be >= 0 (a fraction of each limit), '
                             f'got {self.noise}')
        self.noise_rng = exploration_rng(int(p('seed').value))
        self.compensate = bool(p('compensate_latency').value) and self.trigger == 'timer'
        self.step_ns = int(round(float(self.model.checkpoint_extra.get('frame_interval_s')
                                       or 0.0) * 1e9))
        self.sent = collections.deque(maxlen=16)   # (node clock ns, action) of every command
        self.require_monitor = bool(p('require_monitor').value)
        self.monitor_timeout = p('monitor_timeout').value
        self.sample = sample = bool(p('sample_transitions').value)
        self.rollout = lambda z0, a: self.model.imagine_rewards(z0, a, sample=sample)
        self.objective = p('objective').value
        if self.objective not in ('reward', 'goal_image'):
            raise ValueError(f"objective must be 'reward' or 'goal_image', got "
                             f"{self.objective!r}")
        self.goal = None                    # goal_image: the goal's embedding once set
        self.goal_source = ''
        z = self.model.config.latent_dim
        if self.objective == 'goal_image':
            self.goal_head = GoalHead.from_model(self.model, ckpt)   # refused if none
            # one score function for every goal (the goal is copied into its tensor), so the
            # search is compiled once
            self.goal_buffer = torch.zeros(self.goal_head.config.embed_dim, device=self.device)
            self.rollout = goal_scores(self.model, self.goal_head, self.goal_buffer, sample)
        goal_file = p('goal_image_file').value
        # a bad file stops the node here, not later
        goal_rgb = (read_goal_file(goal_file, self.model.config.image_size)
                    if goal_file and self.objective == 'goal_image' else None)
        # The search compiled (or why not) before any subscription exists: no command waits
        # for it. Then one plan, so the first real one is not slowed by torch's lazy set-up.
        self.search = (self.cem.compile(self.rollout, z) if p('compile').value
                       else 'eager search (compile: false)')
        self.get_logger().info(self.search)
        with torch.no_grad():
            self.cem.plan(self.rollout, torch.zeros(z), torch.ones(z))
        self.cem.reset()
        self.belief = None                  # (mean, std, header, arrival time)
        self.reset_plan = False             # drop the warm start before the next plan
        self.seed = int(p('seed').value)
        self.episode_start = None           # (first frame's stamp in ns, CEM seed) to apply
        self.answered = None                # (frame stamp ns, action) of the last answer
        self.stop_requested = False
        self.monitor_seen = None            # monotonic time of the last planner/stop message
        self.lock = threading.Lock()
        self.pub_lock = threading.Lock()    # the gate: one command at a time, none after close
        self.closed = False

        self.pub = self.create_publisher(TwistStamped if self.stamped else Twist, 'cmd_vel', 10)
        self.pub_answered = self.create_publisher(TwistStamped, 'planner/answered', 10)
        self.pub_ms = self.create_publisher(Float32, 'planner/plan_ms', 10)
        self.pub_ret = self.create_publisher(Float32, 'planner/predicted_return', 10)
        self.view = ImageView(self, 'planner/imagined', 'imagined', p('publish_imagined').value,
                              p('imagined_rate_hz').value)
        # One executor thread: inputs wait at most one plan (their ages count from reception,
        # not from when they are taken), and a plan is never in flight when the node stops.
        # Episode starts are subscribed before beliefs: with both waiting, rclpy takes them in
        # creation order, so an episode's first belief is planned after its reset.
        self.create_subscription(Header, 'room_sim/episode_start', self.on_reset, 10)
        self.create_subscription(Image, 'belief', with_message_info(self.on_belief), 10)
        self.create_subscription(Bool, 'planner/stop', with_message_info(self.on_stop), 10)
        self.period = 1.0 / p('rate_hz').value
        self.create_timer(self.period, self.on_timer)
        # counted since start: what /diagnostics reports (every second)
        self.counts = dict.fromkeys(('plans', 'commands', 'zero_while_holding',
                                     'nonfinite_beliefs', 'nonfinite_plans',
                                     'latency_steps', 'latency_uncompensated',
                                     'goals_set'), 0)
        if self.objective == 'goal_image':
            # transient local: a planner started after the goal was published still gets it
            latched = latched_qos()
            self.pub_goal = self.create_publisher(Header, 'planner/goal_set', latched)
            self.create_subscription(Image, 'goal_image', self.on_goal_image, latched)
            self.create_subscription(CompressedImage, 'goal_image/compressed',
                                     self.on_goal_image, latched)
            self.create_service(Trigger, 'planner/set_goal_from_current_view',
                                self.on_set_goal_from_view)
            if goal_rgb is not None:
                self.set_goal(goal_rgb, f'file {goal_file}')
                self.announce_goal(Header(stamp=self.get_clock().now().to_msg(),
                                          frame_id=self.goal_source))
        self.plan_ms = 0.0
        self.diag = Diagnostics(self)
        self.create_timer(1.0, self.report)
        self.halt = threading.Event()
        threading.Thread(target=self.watchdog, name='planner_watchdog', daemon=True).start()
        self.get_logger().info(f'planner from {ckpt} on {self.device}, trigger={self.trigger}, '
                               f'limits {dict(zip(self.fields, self.high.tolist()))}')

    # -- inputs ----------------------------------------------------------------------------
    def on_belief(self, msg, info):
        arrived = arrival_time(info)
        try:
            mean, std = belief_from_msg(msg)
        except ValueError as e:
            self.get_logger().warning(f'dropping belief message: {e}', throttle_duration_sec=5.0)
            return
        if mean.shape != (self.model.config.latent_dim,):
            self.get_logger().warning(f'dropping belief of size {mean.size}: the model has '
                                      f'{self.model.config.latent_dim} latents',
                                      throttle_duration_sec=5.0)
            return
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            self.counts['nonfinite_beliefs'] += 1
            self.get_logger().warning('non-finite belief: holding zero', throttle_duration_sec=5.0)
            with self.lock:
                self.belief = None          # stale from now on: the watchdog holds zero
            self.publish(np.zeros(len(self.fields)), msg.header)
            return
        with self.lock:
            self.belief = (mean, std, msg.header, arrived)
        if self.trigger == 'belief':
            self.plan_and_publish()

    def on_stop(self, msg, info):
        if msg.data != self.stop_requested:
            self.get_logger().warning('stop requested: holding zero' if msg.data else 'resuming')
        self.stop_requested = msg.data
        if self.require_monitor and self.monitor_seen is None:
            self.get_logger().info('image monitor is up')
        self.monitor_seen = arrival_time(info)

    def on_reset(self, msg):
        try:                                # room_sim's episode_start: frame_id = episode number
            seed = episode_seed(self.seed, int(msg.frame_id))
        except ValueError:
            seed = None
        # trigger=belief (lockstep): the episode starts at the frame with this stamp; beliefs
        # for the last episode's frames may still arrive after this message and must not use
        # up the reset. trigger=timer: at the next plan.
        self.episode_start = (stamp_ns(msg.stamp) if self.trigger == 'belief' else 0, seed)

    # -- goals (objective goal_image) --------------------------------------------------------
    @torch.no_grad()
    def set_goal(self, rgb: np.ndarray, source: str) -> None:
        """Plan toward the view ``rgb`` (S x S x 3 uint8) from the next plan on."""
        self.use_goal(goal_embedding(self.model, self.goal_head, rgb[None])[0], source)

    def use_goal(self, goal: torch.Tensor, source: str) -> None:
        if not torch.all(torch.isfinite(goal)):
            raise ValueError('the goal embeds to non-finite values')
        self.goal, self.goal_source = goal, source
        self.goal_buffer.copy_(goal)
        self.reset_plan = True              # the last plan aimed elsewhere
        self.counts['goals_set'] += 1
        self.get_logger().info(f'goal set from {source}')

    def announce_goal(self, header) -> None:
        """planner/goal_set: the header of what set the goal (the goal image's own header, so
        a sender can tell that its goal is the one planned toward)."""
        self.pub_goal.publish(header)

    def on_goal_image(self, msg) -> None:
        try:
            rgb = image_to_rgb(msg, self.model.config.image_size)
            self.set_goal(rgb, 'goal_image topic')
        except ValueError as e:
            self.get_logger().warning(f'goal image refused: {e}; the goal is unchanged')
            return
        self.announce_goal(msg.header)

    def on_set_goal_from_view(self, request, response):
        with self.lock:
            belief = self.belief
        if belief is None or self.stale():
            response.success, response.message = False, 'no current belief: is the camera up?'
            return response
        try:
            with torch.no_grad():
                goal = self.goal_head(torch.from_numpy(belief[0]).to(self.device).float())
            self.use_goal(goal, 'current view')
        except ValueError as e:
            response.success, response.message = False, str(e)
            return response
        self.announce_goal(Header(stamp=belief[2].stamp, frame_id='current view'))
        response.success, response.message = True, 'goal set to the current view'
        return response

    # -- control ---------------------------------------------------------------------------
    def stale(self) -> bool:
        return self.belief is None or time.monotonic() - self.belief[3] > self.timeout

    def must_hold(self) -> bool:
        """Zero regardless of the belief: a stop request, a required monitor fell silent, or
        no goal yet to plan toward."""
        if self.stop_requested or self.no_goal():
            return True
        if self.monitor_silent():
            self.get_logger().warning(f'image monitor silent for over {self.monitor_timeout} s: '
                                      'holding zero until it is back', throttle_duration_sec=5.0)
            return True
        return False

    def no_goal(self) -> bool:
        return self.objective == 'goal_image' and self.goal is None

    def monitor_silent(self) -> bool:
        return self.require_monitor and (
            self.monitor_seen is None
            or time.monotonic() - self.monitor_seen > self.monitor_timeout)

    def holding(self) -> bool:
        return self.must_hold() or self.stale()

    def watchdog(self):
        """Zero at rate_hz while holding, whatever the executor is doing."""
        while not self.halt.wait(self.period):
            if self.holding():
                self.reset_plan = self.belief is not None
                self.counts['zero_while_holding'] += 1
                self.publish(np.zeros(len(self.fields)))

    def on_timer(self):
        if self.trigger == 'timer' and not self.holding():
            self.plan_and_publish()

    def plan_and_publish(self):
        with self.lock:
            if self.belief is None:
                return
            mean, std, header, _ = self.belief
        if self.must_hold():
            self.publish(np.zeros(len(self.fields)), header)
            return
        stamp = stamp_ns(header.stamp)
        new_episode = self.episode_start is not None and stamp >= self.episode_start[0]
        if self.trigger == 'belief' and self.answered is not None \
                and self.answered[0] == stamp and not (self.reset_plan or new_episode):
            # A lockstep sim re-sent a frame (something was lost downstream): the same frame
            # gets the same answer, and the search state (warm start, generator) stays put.
            self.publish(self.answered[1], header)
            return
        if self.reset_plan or new_episode:
            seed = self.episode_start[1] if new_episode else None
            if new_episode:
                self.episode_start = None
            self.reset_plan = False
            self.cem.reset(seed)
            if seed is not None:
                self.noise_rng = exploration_rng(seed)
        t0 = time.perf_counter()
        z0 = torch.from_numpy(mean)
        if self.compensate:
            z0 = self.advance(z0, header)
        with torch.no_grad():
            res = self.cem.plan(self.rollout, z0, torch.from_numpy(std))
        action = res.action.cpu().numpy()
        if not np.all(np.isfinite(action)):
            self.counts['nonfinite_plans'] += 1
            self.reset_plan = True          # never warm-start from a non-finite plan
        elif self.noise > 0:
            action = add_exploration(action, self.noise, self.high, self.noise_rng)
        self.publish(action, header)
        self.answered = (stamp, action)
        self.plan_ms = (time.perf_counter() - t0) * 1e3
        self.counts['plans'] += 1
        self.pub_ms.publish(Float32(data=self.plan_ms))
        self.pub_ret.publish(Float32(data=float(res.predicted_return)))
        # after the command went out: decoding never delays one
        self.view.publish(lambda: imagined(self.model, mean, res.plan_mean), header)

    @torch.no_grad()
    def advance(self, z: torch.Tensor, header) -> torch.Tensor:
        """The belief mean moved through the commands in flight (``compensate_latency``)."""
        now = self.get_clock().now().nanoseconds
        frame = stamp_ns(header.stamp)
        if not 0 <= now - frame <= self.timeout * 1e9:
            self.counts['latency_uncompensated'] += 1
            return z
        with self.pub_lock:
            sent = list(self.sent)
        acts = commands_in_flight(sent, frame, now, self.step_ns, 3, len(self.fields))
        self.counts['latency_steps'] += len(acts)
        if not acts:
            return z
        a = torch.from_numpy(np.stack(acts).astype(np.float32))[None]      # (1, m, A)
        return self.model.imagine(z[None].float(), a, sample=False)[0, -1]

    def publish(self, action, header=None, final=False):
        """The only way to cmd_vel: finite and within bounds, and nothing after the final zero
        (the watchdog thread, or anything else, is refused here once it went out).

        ``header``: of the belief (camera frame) the command answers, None for a zero that
        answers none. cmd_vel is stamped now whatever the frame's stamp; the same command then
        goes on planner/answered with ``header``, so a lockstep sim steps once per frame."""
        action = np.asarray(action, np.float64).reshape(-1)
        if action.shape != self.low.shape or not np.all(np.isfinite(action)):
            self.get_logger().warning(f'non-finite or malformed command {action}: publishing zero',
                                      throttle_duration_sec=5.0)
            action = np.zeros_like(self.low)
        action = np.clip(action, self.low, self.high)
        if action.any() and self.holding():
            action = np.zeros_like(action)  # planned on a belief that went stale meanwhile
        frame_id = header.frame_id if header is not None else ''
        with self.pub_lock:
            if self.closed:
                return
            self.closed = final
            now = Header(stamp=self.get_clock().now().to_msg(), frame_id=frame_id)
            self.pub.publish(cmd_from_action(action, self.fields, self.stamped, now))
            self.sent.append((Time.from_msg(now.stamp).nanoseconds, action))
            if header is not None:
                self.pub_answered.publish(cmd_from_action(action, self.fields, True, header))
            self.counts['commands'] += 1

    def hold_reason(self) -> str:
        if self.stop_requested:
            return 'stop requested'
        if self.monitor_silent():
            return 'image monitor silent'
        if self.no_goal():
            return 'no goal image yet'
        if self.belief is None:
            return 'no belief'
        return 'belief stale' if self.stale() else ''

    def report(self):
        reason = self.hold_reason()
        age = time.monotonic() - self.belief[3] if self.belief is not None else -1.0
        self.diag.publish(WARN if reason else OK, f'holding zero: {reason}' if reason
                          else 'planning', {**self.counts, 'plan_ms': self.plan_ms,
                                            'belief_age_s': age, 'holding': reason or 'no',
                                            'objective': self.objective, 'search': self.search,
                                            'goal': self.goal_source or 'none'})

    def stop_robot(self):
        """The final zero, on shutdown; waits until subscribers acknowledged it."""
        self.halt.set()
        for _ in range(2):                  # a lossy (best-effort) link still gets one
            self.publish(np.zeros(len(self.fields)))
        self.publish(np.zeros(len(self.fields)), final=True)
        self.pub.wait_for_all_acked(Duration(seconds=1.0))
        self.get_logger().info('stopped: published zero velocity')


def main(args=None):
    return run_node(PlannerNode, args, on_stop=PlannerNode.stop_robot)


if __name__ == '__main__':
    raise SystemExit(main())
