"""`wmc eval` / `wmc demo`: closed-loop episodes over the real ROS graph, vs oracle and random.

room_sim (lockstep, or realtime), belief and planner run as separate processes; this process
only resets episodes and watches ground truth (room_sim/pose), never feeding the controller.
The oracle and random baselines run on the ROS-free world from the very same starts (the sim's
seeded RNG draws starts in the same order).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from room_sim.world import WorldConfig
from room_sim.worlds import make_world, world_config
from world_model_ctrl.graph import control_graph
from world_model_ctrl.messages import stamp_ns
from world_model_ctrl.procs import NodeGroup, ros_env, wait_for


def baseline(policy: str, episodes: int, seed: int, max_steps: int,
             cfg=None, start=None, world_name: str = 'overhead', goals=None) -> dict:
    """Oracle or random episodes on the ROS-free world, from the sim's seeded starts; with
    ``goals`` ([x, y, ...] per episode) toward those instead of the sim's goal. ``steps``: per
    episode, None where it failed."""
    cfg = cfg or world_config(world_name)
    world = make_world(world_name, cfg.to_dict(), seed=seed)
    world.reset(start=start)                          # the sim's start-up reset
    bound = np.array(cfg.action_limits)       # (vx, vy) overhead, (v, w) onboard
    rng = np.random.default_rng(seed + 999)
    steps = []
    for i in range(episodes):
        world.reset(start=start)
        if goals is not None:       # the target of oracle() and success(); nothing is rendered
            world.goal = np.asarray(goals[i][:2], dtype=np.float64)
        steps.append(None)
        for t in range(max_steps + 1):
            if world.success():
                steps[-1] = t
                break
            if t == max_steps:
                break
            a = world.oracle() if policy == 'oracle' else rng.uniform(-bound, bound)
            world.step(a)
    ok = [s for s in steps if s is not None]
    return {'success_rate': len(ok) / episodes,
            'mean_steps': float(np.mean(ok)) if ok else None, 'steps': steps}


class _Watcher:
    """ROS side of the evaluation: resets episodes and records ground truth and diagnostics."""

    def __init__(self, node, record_frames: bool):
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float32, Header
        from std_srvs.srv import Trigger
        self.node, self.Trigger = node, Trigger
        qos = QoSProfile(depth=200)
        self.poses: dict[int, np.ndarray] = {}
        self.goal = None
        self.frames: dict[int, np.ndarray] = {}
        self.plan_ms: list[float] = []
        self.markers: list[int] = []
        self.first = None             # stamp of the current episode's first frame
        self.episode: list[int] = []
        self.target = None            # this episode's goal position when not the sim's
        node.create_subscription(PoseStamped, 'room_sim/pose', self.on_pose, qos)
        node.create_subscription(PoseStamped, 'room_sim/goal', self.on_goal, qos)
        node.create_subscription(Header, 'room_sim/episode_start',
                                 lambda m: self.markers.append(stamp_ns(m.stamp)), qos)
        node.create_subscription(Float32, 'planner/plan_ms',
                                 lambda m: self.plan_ms.append(m.data), qos)
        self.answers = 0         # planner/answered (a re-sent frame is answered without a plan)
        node.create_subscription(TwistStamped, 'planner/answered', self.on_answer, qos)
        if record_frames:
            node.create_subscription(Image, 'camera/image_raw', self.on_image, qos)
        self.reset_client = node.create_client(Trigger, 'room_sim/reset')

    def on_pose(self, m):
        s = stamp_ns(m.header.stamp)
        if self.first is not None and s >= self.first and s not in self.poses:
            self.episode.append(s)                      # this episode's frames, in order
        self.poses[s] = np.array([m.pose.position.x, m.pose.position.y])

    def on_answer(self, m):
        self.answers += 1

    def on_goal(self, m):
        self.goal = np.array([m.pose.position.x, m.pose.position.y])

    def on_image(self, m):
        self.frames[stamp_ns(m.header.stamp)] = np.frombuffer(bytes(m.data), np.uint8).reshape(
            m.height, m.width, 3)


def _oracle_command(world: str, cfg, pose, goal) -> np.ndarray:
    """The world's true-state oracle from a room_sim/pose message (heading from its yaw)."""
    pos = np.array([pose.pose.position.x, pose.pose.position.y])
    if world == 'onboard':
        from room_sim.onboard import oracle_drive
        q = pose.pose.orientation
        return oracle_drive(pos, 2.0 * math.atan2(q.z, q.w), goal, cfg)
    from room_sim.world import oracle_action
    return oracle_action(pos, goal, cfg)


class _OracleDriver:
    """The oracle through the asynchronous loop: each room_sim/pose (ground truth, the frame's
    stamp) answered at once on cmd_vel, which the realtime sim applies at its next tick."""

    def __init__(self, node, world: str, cfg, watch: '_Watcher'):
        from geometry_msgs.msg import PoseStamped, Twist
        from rclpy.qos import QoSProfile
        self.Twist, self.world, self.cfg, self.watch = Twist, world, cfg, watch
        self.pub = node.create_publisher(Twist, 'cmd_vel', 10)
        node.create_subscription(PoseStamped, 'room_sim/pose', self.on_pose, QoSProfile(depth=10))

    def on_pose(self, m):
        goal = self.watch.goal if self.watch.target is None else self.watch.target
        if goal is None:
            return
        a = _oracle_command(self.world, self.cfg, m, goal)
        msg = self.Twist()
        msg.linear.x = float(a[0])
        if self.world == 'onboard':
            msg.angular.z = float(a[1])
        else:
            msg.linear.y = float(a[1])
        self.pub.publish(msg)


def _run_episodes(specs, episodes: int, max_steps: int, cfg, realtime: bool, domain_id,
                  record_frames: bool, quiet: bool, progress: bool, driver=None,
                  desc: str = 'eval', until_goal: bool = True, ready=None,
                  goals=None) -> tuple[list, list]:
    """Start ``specs`` and run ``episodes`` episodes against them: (results, plan_ms).

    ``driver(node, watch)``, if given, sets up the controller inside this process (the
    realtime oracle); otherwise the graph's planner drives and the first plan is awaited.
    ``until_goal=False``: every episode runs ``max_steps`` steps (recording), a success being
    the goal reached at any of them. ``ready(node)``: one more condition before the first.
    ``goals``: per episode (pose, image): the image goes to the planner's goal_image topic
    before the episode's reset (and is awaited on planner/goal_set; with a ``driver``, the
    driver is given the pose instead), success is reaching the pose's position instead of the
    sim's goal.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from tqdm import tqdm

    rclpy.init(domain_id=domain_id)
    node = Node('wmc_eval')
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    watch = _Watcher(node, record_frames)
    if driver is not None:
        driver(node, watch)
    if goals is not None and driver is None:
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from world_model_ctrl.messages import latched_qos
        from world_model_ctrl.views import rgb8_msg
        goal_pub = node.create_publisher(Image, 'goal_image', latched_qos())
        goals_set: list[str] = []
        node.create_subscription(Header, 'planner/goal_set',
                                 lambda m: goals_set.append(m.frame_id), latched_qos())
    results = []
    try:
        with NodeGroup(ros_env(domain_id), quiet=quiet) as group:
            for spec in specs:
                group.start(spec)

            def spin_until(cond, timeout, what):
                def check():
                    group.check_alive()
                    ex.spin_once(timeout_sec=0.01)
                    return cond()
                wait_for(check, timeout, what, poll=0)
            # The sim's markers and poses must reach this node (a marker published before its
            # subscription matched is lost: the reset would never be seen; a pose received
            # shows the sim's topics matched), and with a driver here its commands must reach
            # the sim.
            spin_until(lambda: watch.reset_client.service_is_ready() and len(watch.poses) > 0
                       and node.count_publishers('/room_sim/episode_start') > 0 and (
                           node.count_subscribers('/cmd_vel') > 0 if driver is not None else
                           (node.count_publishers('/planner/plan_ms') > 0
                            and node.count_publishers('/belief') > 0))
                       and (ready is None or ready(node)), 120, 'the control graph')
            spin_until(lambda: len(watch.plan_ms) > 0 or watch.answers > 0 or realtime
                       or driver is not None, 60, 'a first plan')
            watch.plan_ms.clear()          # timings from the episodes only, not warm-up
            bar = tqdm(range(episodes), desc=desc, unit='ep', disable=not progress)
            for ep in bar:
                target = None
                if goals is not None:
                    pose, image = goals[ep]
                    target = watch.target = np.asarray(pose[:2], dtype=np.float64)
                if goals is not None and driver is None:
                    msg = rgb8_msg(image, Header(frame_id=f'eval goal {ep}'))
                    goal_pub.publish(msg)
                    spin_until(lambda: msg.header.frame_id in goals_set, 30,
                               f'the planner to take goal {ep}')
                n_markers = len(watch.markers)
                fut = watch.reset_client.call_async(watch.Trigger.Request())
                spin_until(lambda: fut.done() and len(watch.markers) > n_markers, 30,
                           'the episode reset')
                watch.first = watch.markers[-1]    # stamp of the episode's first frame
                watch.episode = sorted(s for s in watch.poses if s >= watch.first)
                outcome = {'checked': 0}

                def done():
                    stamps, goal = watch.episode, watch.goal if target is None else target
                    for i in range(outcome['checked'], len(stamps)):
                        if 'steps' not in outcome and np.linalg.norm(
                                watch.poses[stamps[i]] - goal) <= cfg.success_radius:
                            outcome.update(success=True, steps=i, stamps=stamps[:i + 1])
                            if until_goal:
                                return True
                        if i >= max_steps:
                            outcome.setdefault('success', False)
                            outcome.setdefault('steps', max_steps)
                            outcome['stamps'] = stamps[:(outcome['steps'] if until_goal
                                                         else max_steps) + 1]
                            return True
                    outcome['checked'] = len(stamps)
                    return False
                timeout = max_steps * (cfg.dt * 2 + 1.0) if realtime else max_steps * 1.0
                spin_until(lambda: watch.goal is not None and done(), timeout,
                           f'episode {ep} to finish')
                track = np.array([watch.poses[s] for s in outcome['stamps']])
                frames = [watch.frames[s] for s in outcome['stamps'] if s in watch.frames]
                goal = watch.goal if target is None else target
                results.append({'success': outcome['success'], 'steps': outcome['steps'],
                                'track': track, 'frames': frames,
                                'distance': np.linalg.norm(track - goal, axis=1)})
                bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return results, list(watch.plan_ms)


def _rates(results) -> tuple[float, float | None, list]:
    ok = [r['steps'] for r in results if r['success']]
    return (float(np.mean([r['success'] for r in results])),
            float(np.mean(ok)) if ok else None, [r['steps'] for r in results])


def evaluation_graph(ckpt, device: str, world: str, params_file, seed: int, realtime: bool,
                     start=None, planner: dict | None = None) -> tuple[list, object]:
    """The control graph (sim, belief, planner, ...) as `wmc eval` runs it: (specs, sim spec).
    ``planner``: more planner parameters (e.g. exploration_noise)."""
    args = {'checkpoint': ckpt or 'shipped', 'device': device, 'world': world}
    graph = control_graph(args, params_file=params_file)
    sim_spec = None
    for _, exe, spec in graph:
        if exe == 'room_sim':
            sim_spec = spec
            spec.params.update({'mode': 'realtime' if realtime else 'lockstep', 'seed': seed})
            if not realtime:
                # Step on the planner's planner/answered (the frame each command answers), not
                # on cmd_vel: a command for an older frame (the previous episode's last) is
                # ignored, so exactly one command advances the world per frame.
                spec.params['answer_topic'] = 'planner/answered'
                # and not before the first reset: the start-up frame is answered while the
                # graph warms up, which would drive the robot (and a recorder would keep it)
                spec.params['wait_for_reset'] = True
                # and no reset before belief, planner and the evaluator all hear of it (seen:
                # the planner's subscription matched after the first reset, so it planned
                # episode 0's first frame with the start-up frame's search state)
                spec.params['reset_subscribers'] = 3
            if start is not None:
                spec.params['start'] = [float(v) for v in start]
        if exe == 'planner':
            spec.params['trigger'] = 'timer' if realtime else 'belief'
            if not realtime:      # the sim re-sends a lost frame after 0.5 s: let that win
                spec.params['belief_timeout'] = 2.0
            spec.params.update(planner or {})
        if exe == 'belief' and not realtime:
            # One command per frame in lockstep: wait for it even on a loaded machine (nothing
            # else moves the world meanwhile; a late one is counted: commands_late).
            # Paired by stamp with the answer to the frame before (what the sim steps on).
            spec.params.update({'cmd_sync': True, 'cmd_sync_timeout': 5.0,
                                'answer_topic': 'planner/answered'})
    return [spec for _, _, spec in graph], sim_spec


def run_closed_loop(ckpt: str | None = None, episodes: int = 20, seed: int = 0,
                    max_steps: int = 100, device: str = 'cpu', realtime: bool = False,
                    domain_id: int | None = None, record_frames: bool = False,
                    params_file: str | None = None, quiet: bool = True,
                    progress: bool = True, start=None, world: str = 'overhead',
                    goal_image: bool = False) -> dict:
    """Episodes from the sim's seeded random starts (or all from ``start``, [x, y] m) in
    ``world`` (overhead | onboard).

    Lockstep: the oracle and random baselines run on the ROS-free world from the same starts.
    Realtime: the oracle also drives the realtime sim through ROS (ground-truth pose in,
    cmd_vel out, no model): ``oracle_mean_steps`` is that one, the fair comparison for a
    controller that acts on frames already a step old; ``lockstep_oracle_mean_steps`` the
    ROS-free one.

    ``goal_image``: a random goal pose per episode (``offline_loop.draw_goal``, the same as
    `wmc eval --no-ros --goal-image`); the planner (objective goal_image) gets the view from
    there on its goal_image topic; the oracle drives from the same starts to the same goals.
    """
    from room_sim.worlds import view_at
    from world_model_ctrl.offline_loop import draw_goal, goal_rng
    cfg = world_config(world)
    goals = None
    if goal_image:
        rng = goal_rng(seed)
        poses = [draw_goal(world, cfg, rng) for _ in range(episodes)]
        goals = [(g, view_at(world, g, cfg.to_dict())) for g in poses]
    graph, sim_spec = evaluation_graph(
        ckpt, device, world, params_file, seed, realtime, start,
        planner={'objective': 'goal_image'} if goal_image else None)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    t_start = time.monotonic()
    common = dict(episodes=episodes, max_steps=max_steps, cfg=cfg, realtime=realtime,
                  domain_id=domain_id, quiet=quiet, progress=progress)
    results, plan_ms = _run_episodes(graph, record_frames=record_frames, goals=goals, **common)
    wall_s = round(time.monotonic() - t_start, 1)
    success_rate, mean_steps, _ = _rates(results)
    oracle, rand = (baseline(policy, episodes, seed, max_steps, cfg, start, world,
                             goals=poses if goal_image else None)
                    for policy in ('oracle', 'random'))
    extra = {}
    if realtime:
        driven, _ = _run_episodes(
            [sim_spec], record_frames=False, desc='eval (oracle, realtime)', goals=goals,
            driver=lambda node, watch: _OracleDriver(node, world, cfg, watch), **common)
        rate, mean, steps = _rates(driven)
        extra = {'lockstep_oracle_success_rate': oracle['success_rate'],
                 'lockstep_oracle_mean_steps': oracle['mean_steps']}
        oracle = {'success_rate': rate, 'mean_steps': mean,
                  'steps': [s if r['success'] else None for s, r in zip(steps, driven)]}
    ms = np.array(plan_ms) if plan_ms else np.array([np.nan])
    summary = {
        'episodes': episodes, 'seed': seed, 'max_steps': max_steps,
        'mode': 'realtime' if realtime else 'lockstep', 'device': device, 'world': world,
        'checkpoint': str(ckpt or 'shipped'),
        'objective': 'goal_image' if goal_image else 'reward',
        'success_rate': success_rate, 'mean_steps': mean_steps,
        'oracle_success_rate': oracle['success_rate'], 'oracle_mean_steps': oracle['mean_steps'],
        **extra,
        'random_success_rate': rand['success_rate'], 'random_mean_steps': rand['mean_steps'],
        'plan_ms_p50': float(np.percentile(ms, 50)), 'plan_ms_p99': float(np.percentile(ms, 99)),
        'plan_ms_max': float(np.max(ms)), 'plans': int(len(plan_ms)),
        'control_period_ms': 1000.0 * cfg.dt,
        'wall_s': wall_s,
        'per_episode': [{'success': r['success'], 'steps': r['steps'],
                         'oracle_steps': (oracle['steps'][i] if i < len(oracle['steps'])
                                          else None),
                         'start': [float(v) for v in r['track'][0]],
                         **({'goal': [float(v) for v in poses[i][:2]]} if goal_image else {})}
                        for i, r in enumerate(results)],
    }
    if summary['mean_steps'] and oracle['mean_steps']:
        summary['steps_ratio_vs_oracle'] = summary['mean_steps'] / oracle['mean_steps']
    if realtime and summary['mean_steps'] and extra['lockstep_oracle_mean_steps']:
        summary['steps_ratio_vs_lockstep_oracle'] = \
            summary['mean_steps'] / extra['lockstep_oracle_mean_steps']
    if goal_image:
        for r, (_, image) in zip(results, goals):
            r['goal_image'] = image
    summary['_episodes'] = results          # frames and tracks for the demo; not in JSON
    return summary


def write_demo_outputs(summary: dict, out_dir: str | Path, gif_episodes: int = 3) -> dict:
    """GIF of the camera view with the driven track, and a distance-to-goal plot."""
    from room_sim.world import RoomWorld
    from world_model_ctrl.viz import distance_plot, trajectory_gif
    out_dir = Path(out_dir)
    eps = summary['_episodes']
    room = RoomWorld(WorldConfig(image_size=64))
    px = room.to_pixels
    gif_eps = []
    for e in eps[:gif_episodes]:
        if not e['frames']:
            continue
        frames, track = np.stack(e['frames']), np.array([px(p) for p in e['track']])
        if summary.get('world', 'overhead') == 'onboard':
            # the robot's own camera, and beside it the room from above with the track
            above = []
            for pos in e['track'][:len(frames)]:
                room.pos = np.asarray(pos, np.float64)
                above.append(room.render())
            frames = np.concatenate([frames, np.stack(above)], axis=2)
            track = track + np.array([e['frames'][0].shape[1], 0])
        if e.get('goal_image') is not None:     # what the planner was shown, on the right
            goal = np.broadcast_to(e['goal_image'], (len(frames),) + e['goal_image'].shape)
            frames = np.concatenate([frames, goal], axis=2)
        gif_eps.append((frames, track))
    paths = {}
    if gif_eps:
        paths['gif'] = str(trajectory_gif(gif_eps, out_dir / 'demo.gif'))
    paths['plot'] = str(distance_plot([e['distance'] for e in eps], out_dir / 'distance.png',
                                      dt=WorldConfig().dt,
                                      success_radius=WorldConfig().success_radius,
                                      labels=[f'episode {i}' for i in range(len(eps))]))
    return paths
