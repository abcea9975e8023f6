"""`wmc`: the command line of world_model_ctrl (see docs/cli.md and shared design)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _write_json(obj: dict, path: str | None) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + '\n')
    else:
        print(text)


def cmd_collect(a) -> int:
    from world_model_ctrl.collect import collect
    sim = {'image_size': a.image_size, 'noise_std': a.noise_std, 'random_goal': a.random_goal}
    result = collect(a.out, episodes=a.episodes, steps=a.steps, seed=a.seed, policy=a.policy,
                     storage=a.storage, sim_params=sim, domain_id=a.domain_id,
                     progress=not a.no_progress, world=a.world)
    print(f"wrote {result['bag']}: {result['episodes']} episodes, {result['steps']} steps in "
          f"{result['collect_s']:.1f} s ({result['steps_per_s']:.0f} steps/s)", file=sys.stderr)
    if a.json:
        _write_json(result, a.json)
    return 0


def cmd_collect_planner(a) -> int:
    from world_model_ctrl.planner_data import collect_planner, collect_planner_ros
    args = (a.out, a.ckpt, a.episodes, a.steps, a.seed, a.noise, a.world, a.params, a.storage)
    r = (collect_planner_ros(*args, domain_id=a.domain_id, progress=not a.no_progress)
         if a.ros else collect_planner(*args, progress=not a.no_progress))
    print(f"wrote {r['bag']}: {r['episodes']} planner episodes, {r['steps']} steps in "
          f"{r['wall_s']:.0f} s; the goal was reached in {r['reached_goal_fraction']:.0%}",
          file=sys.stderr)
    if a.json:
        _write_json(r, a.json)
    return 0


def cmd_improve(a) -> int:
    from world_model_ctrl.improve import improve
    over = _overrides(a, train_keys=())
    improve(a.out, a.bags, a.rounds, a.world, a.ckpt, a.episodes, a.steps, a.noise,
            a.train_steps, a.eval_episodes, a.eval_seed, a.seed, a.params,
            {k: v for k, v in over.items() if v}, progress=not a.no_progress,
            log=lambda m: print(m, file=sys.stderr), ros=a.ros, domain_id=a.domain_id)
    print(f'table: {Path(a.out) / "improve.json"}, plot: {Path(a.out) / "improve.png"}, '
          f'model: {Path(a.out) / "model.pt"}', file=sys.stderr)
    return 0


def cmd_view(a) -> int:
    import cv2

    from room_sim.worlds import view_at
    frame = view_at(a.world, a.at, {'image_size': a.size}, goal=a.goal)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f'wmc view: cannot write {out} (a .png or .jpg name?)')
    print(f'wrote {out}: {a.world} camera, robot at {a.at}', file=sys.stderr)
    return 0


def _add_ros_collect_args(p) -> None:
    p.add_argument('--ros', action='store_true',
                   help='collect through the ROS nodes (room_sim, belief, planner with '
                        'exploration_noise, recorder) in lockstep instead of without ROS')
    p.add_argument('--domain-id', type=int, default=None,
                   help='ROS_DOMAIN_ID for --ros (default: inherited)')


def cmd_bag_info(a) -> int:
    from world_model_ctrl.data import bag_summary
    info = bag_summary(a.bag)
    if a.json:
        _write_json(info, None if a.json == '-' else a.json)
        return 0
    print(f"bag:       {info['path']}")
    print(f"storage:   {info.get('storage')}")
    print(f"duration:  {info.get('duration_s', 0):.2f} s")
    print(f"messages:  {info.get('message_count')}")
    print(f"episodes:  {info.get('episodes')}")
    print('topics:')
    for t in info['topics']:
        extra = ''
        if t.get('image'):
            im = t['image']
            extra = f"  {im.get('width')}x{im.get('height')} {im.get('encoding')}"
        if t.get('nonfinite'):
            extra += f"  {t['nonfinite']} NON-FINITE (NaN/inf)"
        if t.get('malformed'):
            extra += f"  {t['malformed']} MALFORMED"
        print(f"  {t['name']:<28} {t['type']:<32} {t['count']:>7} msgs "
              f"{t.get('rate_hz') or 0:8.1f} Hz{extra}")
    return 0


def _overrides(a, train_keys=('steps', 'batch_size', 'seq_len', 'lr', 'device', 'seed')) -> dict:
    """CLI flags and --set section.key=value (YAML-parsed) -> a config overlay."""
    import yaml
    out: dict = {'model': {}, 'data': {}, 'train': {}}
    for k in train_keys:
        v = getattr(a, k, None)
        if v is not None:
            out['train'][k] = v
    for item in a.set or []:
        key, sep, value = item.partition('=')
        section, _, name = key.partition('.')
        if not sep or section not in out or not name:
            raise ValueError(f'--set wants section.key=value with section model|data|train, '
                             f'got {item!r}')
        try:
            out[section][name] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f'--set {item!r}: the value is not valid YAML: '
                             f'{getattr(e, "problem", None) or e}') from None
    return out


def _cmd_train(a, module) -> int:
    """train-ssm and train-prior: the same conventions, different model."""
    from world_model_ctrl.training import load_yaml
    overlay = load_yaml(a.config) if a.config else None
    cfg = module.resolve_config(a.preset, overlay, _overrides(a))
    out = Path(a.out)
    if out.exists() and not a.resume and not a.force:
        raise FileExistsError(f'{out} exists; pass --resume to continue it or --force to '
                              'start over')
    summary = module.train(a.bags, out, cfg, resume=a.resume, log_dir=a.log_dir,
                           cache_dir=a.cache_dir, progress=not a.no_progress)
    _write_json(summary, a.json)
    return 0


def cmd_train_ssm(a) -> int:
    from world_model_ctrl import train_ssm
    return _cmd_train(a, train_ssm)


def cmd_train_prior(a) -> int:
    from world_model_ctrl import train_prior
    return _cmd_train(a, train_prior)


def cmd_eval_prior(a) -> int:
    from world_model_ctrl.cem import resolve_device
    from world_model_ctrl.eval_prior import eval_prior
    from world_model_ctrl.paths import resolve_checkpoint
    ckpt = resolve_checkpoint(a.ckpt, 'prior.pt')
    result = eval_prior(ckpt, a.bags, samples=a.samples, frames=a.frames,
                        save_samples_dir=a.save_samples, device=resolve_device(a.device),
                        seed=a.seed, progress=not a.no_progress)
    _write_json(result, a.json)
    if a.json:
        print(f"bits/dim {result['bits_per_dim']:.3f}, sample validity "
              f"{result['sample_validity']:.2f}, OOD AUROC {result['ood_auroc']:.3f}",
              file=sys.stderr)
    return 0


def cmd_score_prior(a) -> int:
    from world_model_ctrl.cem import resolve_device
    from world_model_ctrl.diffusion import PriorModel
    from world_model_ctrl.eval_prior import frames_from_bags, frames_from_dir, score_frames
    from world_model_ctrl.paths import resolve_checkpoint
    device = resolve_device(a.device)
    model = PriorModel.from_checkpoint(resolve_checkpoint(a.ckpt, 'prior.pt'), device=device)
    if a.images:
        frames, names = frames_from_dir(a.images, model.config.image_size)
    else:
        frames = frames_from_bags(a.bags, model)
        names = [f'frame {i}' for i in range(len(frames))]
    result = score_frames(model, frames, device=device)
    result['names'] = names
    _write_json(result, a.json)
    return 0


def cmd_eval_ssm(a) -> int:
    from world_model_ctrl.eval_ssm import eval_ssm
    from world_model_ctrl.paths import default_checkpoint
    from world_model_ctrl.cem import resolve_device
    ckpt = a.ckpt or default_checkpoint('ssm.pt')
    horizons = [int(h) for h in a.horizons.split(',')]
    result = eval_ssm(ckpt, a.bags, a.context, horizons, resolve_device(a.device),
                      progress=not a.no_progress)
    _write_json(result, a.json)
    if a.json:
        ol, cl = result['openloop_mse'], result['copy_last_mse']
        print(f"elbo/frame {result['elbo_per_frame']:.1f} nats, recon mse "
              f"{result['recon_mse']:.5f}, reward rmse {result['reward_rmse']:.4f} "
              f"(std {result['reward_std']:.4f})", file=sys.stderr)
        for h in ol:
            print(f'  horizon {h:>2}: open-loop mse {ol[h]:.5f}  copy-last {cl[h]:.5f}',
                  file=sys.stderr)
    return 0


def _eval_summary_lines(s: dict) -> str:
    ratio = s.get('steps_ratio_vs_oracle')
    nan = float('nan')
    return (f"success {s['success_rate']:.2f} (oracle {s['oracle_success_rate']:.2f}, random "
            f"{s['random_success_rate']:.2f}); mean steps {s['mean_steps'] or nan:.1f} vs "
            f"oracle {s['oracle_mean_steps'] or nan:.1f}"
            + (f' (x{ratio:.2f})' if ratio else '')
            + (f", ROS-free oracle {s['lockstep_oracle_mean_steps'] or nan:.1f}"
               if 'lockstep_oracle_mean_steps' in s else '')
            + f"; plan ms p50 {s['plan_ms_p50']:.1f} p99 {s['plan_ms_p99']:.1f} "
            f"(control period {s['control_period_ms']:.0f} ms)")


def cmd_export(a) -> int:
    from world_model_ctrl.checkpoint import export_checkpoint
    add = _recorded_from_bags(a.src, a.record_from) if a.record_from else None
    path = export_checkpoint(a.src, a.dst, overwrite=a.force, add=add)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.1f} MB, no optimizer state'
          + (f'; recorded {add}' if add else '') + ')', file=sys.stderr)
    return 0


def _recorded_from_bags(src, bags) -> dict:
    """What train-ssm records about its data (frame interval, action fields and bounds), read
    from ``bags`` with the data config stored in world-model checkpoint ``src``: for a
    checkpoint trained before they were recorded."""
    import tempfile

    from world_model_ctrl.actions import action_spec
    from world_model_ctrl.checkpoint import load_checkpoint
    from world_model_ctrl.data import DataConfig, build_cache, frame_interval
    ckpt = load_checkpoint(src, 'ssm')
    cfg = DataConfig.from_dict(ckpt['extra'].get('data') or {})
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(list(bags), tmp, cfg, strict=True)
        return {'frame_interval_s': frame_interval(cache),
                'action': action_spec(cfg.action_fields, cache.actions)}


def cmd_fastdds_profile(a) -> int:
    from world_model_ctrl.camera import fastdds_profile
    print(fastdds_profile())
    return 0


def cmd_train_goal(a) -> int:
    import yaml

    from world_model_ctrl.goal import train_goal
    from world_model_ctrl.paths import resolve_checkpoint
    from world_model_ctrl.worlds import get_world
    overrides = {}
    for item in a.set or []:
        key, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'wmc train-goal: --set wants KEY=VALUE, got {item!r}')
        overrides[key.strip()] = yaml.safe_load(value)
    if a.steps is not None:
        overrides['steps'] = a.steps
    ckpt = resolve_checkpoint(a.ckpt or 'shipped', get_world(a.world).checkpoint)
    try:
        m = train_goal(ckpt, a.bags, a.out, overrides, force=a.force,
                       progress=not a.no_progress)
    except (TypeError, ValueError, FileExistsError) as e:
        raise SystemExit(f'wmc train-goal: {e}')
    _write_json(m, a.json)
    print(f"wrote {a.out}: {ckpt} with a goal head ({m['frames']} frames of "
          f"{m['episodes']} episodes, {m['train_s']:.0f} s; recorded steps measure "
          f"{m['step_distance_p50']:.2f} p50, {m['step_distance_p99']:.2f} p99 steps)",
          file=sys.stderr)
    return 0


def cmd_eval(a) -> int:
    from world_model_ctrl.closed_loop import run_closed_loop
    if a.no_ros:
        if a.realtime or a.device != 'cpu':
            raise SystemExit('wmc eval: --no-ros runs lockstep on the CPU (drop --realtime '
                             'and --device)')
        from world_model_ctrl.offline_loop import run_offline
        s = run_offline(a.ckpt, a.episodes, a.seed, a.max_steps, a.world, a.params,
                        progress=not a.no_progress, goal_image=a.goal_image)
        _write_json(s, a.json)
        print(_eval_summary_lines(s), file=sys.stderr)
        return 0
    s = run_closed_loop(a.ckpt, a.episodes, a.seed, a.max_steps, a.device, a.realtime,
                        a.domain_id, params_file=a.params, progress=not a.no_progress,
                        world=a.world, goal_image=a.goal_image)
    s.pop('_episodes')
    _write_json(s, a.json)
    print(_eval_summary_lines(s), file=sys.stderr)
    return 0


def cmd_demo(a) -> int:
    from world_model_ctrl.closed_loop import run_closed_loop, write_demo_outputs
    out = Path(a.out)
    s = run_closed_loop(a.ckpt, a.episodes, a.seed, a.max_steps, 'cpu', False, a.domain_id,
                        record_frames=True, world=a.world, goal_image=a.goal_image)
    paths = write_demo_outputs(s, out)
    s.pop('_episodes')
    _write_json(s, str(out / 'demo_summary.json'))
    print('\nworld_model_ctrl demo: the learned world model drove the robot over ROS 2 topics')
    print('  ' + _eval_summary_lines(s))
    for k, v in paths.items():
        print(f'  {k}: {v}')
    print(f"  summary: {out / 'demo_summary.json'}")
    return 0


class _ReadyWatch:
    """`wmc up: ready` once the planner's outputs exist: it creates them after its start-up
    (model loaded, search compiled), so from then on commands answer frames."""

    def __init__(self, namespace: str):
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('wmc_up_watch', context=self.context,
                                      start_parameter_services=False)
        self.topic = (namespace.rstrip('/') + '/planner/plan_ms')
        self.t0, self.ready = time.monotonic(), False

    def check(self):
        if not self.ready and self.node.count_publishers(self.topic) > 0:
            self.ready = True
            print(f'wmc up: ready after {time.monotonic() - self.t0:.1f} s (planner up, its '
                  'search compiled or eager: see its log)', file=sys.stderr)

    def close(self):
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def cmd_up(a) -> int:
    import signal
    import time

    from world_model_ctrl.checkpoint import load_checkpoint
    from world_model_ctrl.graph import control_graph
    from world_model_ctrl.paths import resolve_checkpoint
    from world_model_ctrl.procs import NodeGroup, fully_qualified_namespace, ros_env
    from world_model_ctrl.worlds import get_world
    namespace = fully_qualified_namespace(a.namespace)
    if namespace != '/':
        from rclpy.validate_namespace import validate_namespace
        try:
            validate_namespace(namespace)
        except Exception as e:      # InvalidNamespaceException: one line, before any node
            why = str(e).splitlines()[0].rstrip(': ')
            print(f'wmc up: bad --namespace {a.namespace!r}: {why}', file=sys.stderr)
            return 2
    args = {'checkpoint': a.checkpoint or 'shipped', 'device': a.device,
            'use_sim': 'false' if a.no_sim else 'true', 'image_topic': a.image_topic,
            'cmd_vel_topic': a.cmd_vel_topic, 'cmd_vel_stamped': str(a.cmd_vel_stamped).lower(),
            'namespace': '' if namespace == '/' else namespace, 'monitor': str(a.monitor).lower(),
            'prior_checkpoint': a.prior_checkpoint or 'shipped',
            'compressed': str(a.compressed).lower(), 'world': a.world,
            'objective': a.objective, 'goal_image_file': json.dumps(a.goal_image_file or '')}
    graph = control_graph(args, params_file=a.params)
    # Refuse a missing, foreign or non-finite checkpoint here, before any node starts.
    load_checkpoint(resolve_checkpoint(args['checkpoint'], get_world(a.world).checkpoint), 'ssm')
    if a.monitor:
        load_checkpoint(resolve_checkpoint(args['prior_checkpoint'], 'prior.pt'), 'prior')
    # Ctrl-C in a terminal reaches every node of the process group as well; either way the
    # nodes are stopped planner first (its last message is the final zero).
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    group = NodeGroup(ros_env())
    watch = None
    try:
        for pkg, exe, spec in graph:
            print(f'starting {pkg}/{exe}', file=sys.stderr)
            group.start(spec)
        watch = _ReadyWatch(namespace)
        while not stop:
            group.check_alive()
            watch.check()
            time.sleep(0.2)
    finally:
        if watch is not None:
            watch.close()
        codes = group.stop_all()
    failed = {name: rc for name, rc in codes.items() if rc != 0}
    if failed:
        print(f'wmc up: nodes exited with errors: {failed}', file=sys.stderr)
    return 1 if failed else 0


def _add_train_args(p, default_out: str):
    p.add_argument('--bags', nargs='+', required=True, help='rosbag2 directories or files')
    p.add_argument('--out', default=default_out, help='checkpoint to write')
    p.add_argument('--config', help='YAML overlay with model/data/train sections (and preset)')
    p.add_argument('--preset', default='default', help='named preset: default, small, debug')
    p.add_argument('--set', action='append', metavar='SECTION.KEY=VALUE',
                   help='override any config field, e.g. --set model.latent_dim=16')
    p.add_argument('--steps', type=int)
    p.add_argument('--batch-size', type=int)
    p.add_argument('--seq-len', type=int)
    p.add_argument('--lr', type=float)
    p.add_argument('--device', help='auto | cpu | cuda | cuda:N')
    p.add_argument('--seed', type=int)
    p.add_argument('--resume', action='store_true', help='continue training --out')
    p.add_argument('--force', action='store_true', help='overwrite an existing --out')
    p.add_argument('--log-dir', help='TensorBoard run directory (default: next to --out)')
    p.add_argument('--cache-dir', help='dataset cache directory (default: next to --out)')
    p.add_argument('--json', help='write the training summary (throughput, metrics) here')
    p.add_argument('--no-progress', action='store_true')


def _add_world_arg(p):
    from world_model_ctrl.worlds import WORLDS
    p.add_argument('--world', default='overhead', choices=sorted(WORLDS),
                   help='overhead: camera above, holonomic; onboard: forward camera on a '
                        'diff-drive robot (its sim and control params, shipped model)')


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='wmc', description='world_model_ctrl command line')
    sub = ap.add_subparsers(dest='command', required=True)

    p = sub.add_parser('collect', help='record exploration episodes from room_sim into a bag')
    p.add_argument('--out', required=True, help='new rosbag2 directory to write')
    p.add_argument('--episodes', type=int, default=10)
    p.add_argument('--steps', type=int, default=50, help='commands per episode')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--policy', default='mix', choices=['random', 'ou', 'goal', 'turns', 'mix', 'waypoints'],
                   help="exploration policy ('turns': onboard world only; 'waypoints' covers "
                        "the floor evenly, for goal images)")
    p.add_argument('--storage', default='mcap', choices=['mcap', 'sqlite3'])
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--noise-std', type=float, default=0.0)
    p.add_argument('--random-goal', action='store_true')
    p.add_argument('--domain-id', type=int, default=None,
                   help='ROS_DOMAIN_ID for the sim graph (default: inherited)')
    p.add_argument('--json', help='also write the collection summary (rate) to this file')
    p.add_argument('--no-progress', action='store_true')
    _add_world_arg(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser('improve', help="rounds of the planner's own episodes -> fine-tune -> "
                       'evaluate (data aggregation), with a table and a plot; resumable')
    p.add_argument('--bags', nargs='+', required=True, help='the base training bags')
    p.add_argument('--out', required=True, help='run directory (improve.json, model.pt, bags)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--ckpt', help="starting SSM checkpoint (default: the world's shipped model)")
    p.add_argument('--episodes', type=int, default=100, help='planner episodes per round')
    p.add_argument('--steps', type=int, default=50, help='commands per episode')
    p.add_argument('--noise', type=float, default=0.3,
                   help="exploration noise, a fraction of each field's limit")
    p.add_argument('--train-steps', type=int, default=1000, help='fine-tuning steps per round')
    p.add_argument('--eval-episodes', type=int, default=20)
    p.add_argument('--eval-seed', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0, help='collection seed (round k: seed + k)')
    p.add_argument('--params', help="control params YAML (default: the world's)")
    p.add_argument('--set', action='append', metavar='SECTION.KEY=VALUE',
                   help='change the recorded recipe for the fine-tune, e.g. model.overshoot=10')
    _add_ros_collect_args(p)
    p.add_argument('--no-progress', action='store_true')
    _add_world_arg(p)
    p.set_defaults(func=cmd_improve)

    p = sub.add_parser('collect-planner', help="record the planner's own episodes (+ noise) "
                       'into a bag, without ROS or (--ros) through the nodes (data '
                       'aggregation for fine-tuning)')
    _add_ros_collect_args(p)
    p.add_argument('--out', required=True, help='new rosbag2 directory to write')
    p.add_argument('--ckpt', help="SSM checkpoint (default: the world's shipped model)")
    p.add_argument('--episodes', type=int, default=100)
    p.add_argument('--steps', type=int, default=50, help='commands per episode')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--noise', type=float, default=0.3,
                   help="Gaussian exploration noise added to each command, as a fraction of "
                        "each field's limit")
    p.add_argument('--params', help="control params YAML (default: the world's)")
    p.add_argument('--storage', default='mcap', choices=['mcap', 'sqlite3'])
    p.add_argument('--json', help='also write the summary to this file')
    p.add_argument('--no-progress', action='store_true')
    _add_world_arg(p)
    p.set_defaults(func=cmd_collect_planner)

    p = sub.add_parser('view', help='the camera frame with the robot standing at a pose (a '
                       'goal image for the goal at that pose), written as an image file')
    p.add_argument('--at', type=float, nargs='+', required=True, metavar='V',
                   help='x y (m; onboard: x y heading, rad)')
    p.add_argument('--goal', type=float, nargs=2, metavar=('X', 'Y'),
                   help="where the red goal marker stands (default: the world's)")
    p.add_argument('--size', type=int, default=64, help='image size in pixels (square)')
    p.add_argument('--out', default='view.png', help='image file (.png, .jpg)')
    _add_world_arg(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser('bag-info', help='summarise any rosbag2')
    p.add_argument('bag')
    p.add_argument('--json', nargs='?', const='-', help='JSON to stdout, or to a file')
    p.set_defaults(func=cmd_bag_info)

    p = sub.add_parser('train-ssm', help='fit the sequential VAE world model on bags')
    _add_train_args(p, 'checkpoints/ssm.pt')
    p.set_defaults(func=cmd_train_ssm)

    p = sub.add_parser('eval-ssm', help='held-out ELBO, open-loop prediction, reward error')
    p.add_argument('--ckpt', help='SSM checkpoint (default: the shipped models/ssm.pt)')
    p.add_argument('--bags', nargs='+', required=True)
    p.add_argument('--json', help='write the metrics here (default: stdout)')
    p.add_argument('--context', type=int, default=5, help='frames filtered before open loop')
    p.add_argument('--horizons', default='1,5,10,15')
    p.add_argument('--device', default='auto')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=cmd_eval_ssm)

    p = sub.add_parser('train-prior', help='fit the DDPM image prior on bags')
    _add_train_args(p, 'checkpoints/prior.pt')
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser('eval-prior', help='bits/dim, sample validity, OOD AUROC')
    p.add_argument('--ckpt', help='prior checkpoint (default: the shipped models/prior.pt)')
    p.add_argument('--bags', nargs='+', required=True)
    p.add_argument('--json', help='write the metrics here (default: stdout)')
    p.add_argument('--samples', type=int, default=64, help='DDIM samples for validity')
    p.add_argument('--frames', type=int, default=128, help='held-out frames evaluated')
    p.add_argument('--save-samples', metavar='DIR', help='write the samples as PNG files')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='auto')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=cmd_eval_prior)

    p = sub.add_parser('score-prior', help='per-frame OOD score (higher = more unusual)')
    p.add_argument('--ckpt', help='prior checkpoint (default: the shipped models/prior.pt)')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--bags', nargs='+')
    src.add_argument('--images', metavar='DIR', help='a folder of PNG/JPEG frames')
    p.add_argument('--json', help='write the scores here (default: stdout)')
    p.add_argument('--device', default='auto')
    p.set_defaults(func=cmd_score_prior)

    p = sub.add_parser('export', help='copy a checkpoint without optimizer state (to ship)')
    p.add_argument('src')
    p.add_argument('dst')
    p.add_argument('--force', action='store_true', help='overwrite an existing DST')
    p.add_argument('--record-from', nargs='+', metavar='BAG',
                   help='world model trained before checkpoints recorded their frame interval '
                        'and action bounds: record them from its training bags')
    p.set_defaults(func=cmd_export)

    p = sub.add_parser('fastdds-profile', help='print the path of the Fast DDS profile for '
                       'large camera frames (export FASTDDS_DEFAULT_PROFILES_FILE=... for the '
                       'camera driver)')
    p.set_defaults(func=cmd_fastdds_profile)

    p = sub.add_parser('eval', help='closed-loop episodes over ROS vs oracle and random')
    p.add_argument('--ckpt', help='SSM checkpoint (default: the shipped models/ssm.pt)')
    p.add_argument('--episodes', type=int, default=20)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-steps', type=int, default=100)
    p.add_argument('--device', default='cpu')
    p.add_argument('--realtime', action='store_true',
                   help='realtime sim at 10 Hz with a timer-driven planner (default: lockstep)')
    p.add_argument('--no-ros', action='store_true',
                   help='lockstep without ROS: the world, filter and CEM called in one process '
                        '(same starts and planner parameters; CPU, quick model checks)')
    p.add_argument('--params', help='control params YAML (default: config/control.yaml)')
    p.add_argument('--goal-image', action='store_true',
                   help='a random goal pose per episode, given to the planner as the picture '
                        'taken there (objective goal_image); success = reaching that pose')
    p.add_argument('--domain-id', type=int)
    p.add_argument('--json', help='write the metrics here (default: stdout)')
    p.add_argument('--no-progress', action='store_true')
    _add_world_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser('train-goal', help='fit the goal head (steps between latent states) '
                       'for planning toward goal images; writes a copy of the checkpoint')
    p.add_argument('--ckpt', help='SSM checkpoint (default: the world\'s shipped model)')
    p.add_argument('--bags', nargs='+', required=True)
    p.add_argument('--out', required=True, help='the checkpoint with its goal head')
    p.add_argument('--steps', type=int, help='optimiser steps (default 6000)')
    p.add_argument('--set', action='append', metavar='KEY=VALUE',
                   help='any goal.GoalTrainConfig field, or hidden / embed_dim of the head')
    p.add_argument('--force', action='store_true', help='overwrite --out')
    p.add_argument('--json', help='write the training metrics here (default: stdout)')
    p.add_argument('--no-progress', action='store_true')
    _add_world_arg(p)
    p.set_defaults(func=cmd_train_goal)

    p = sub.add_parser('demo', help='what `make demo` runs: a few episodes, a GIF and a plot')
    p.add_argument('--ckpt')
    p.add_argument('--episodes', type=int, default=4)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-steps', type=int, default=100)
    p.add_argument('--out', default='out')
    p.add_argument('--domain-id', type=int)
    p.add_argument('--goal-image', action='store_true',
                   help='random goals given as pictures (objective goal_image); the GIF shows '
                        'each goal image beside the camera')
    _add_world_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser('up', help='start the control graph without ros2 launch')
    p.add_argument('--params', help='params YAML replacing config/control.yaml')
    p.add_argument('--checkpoint', help='SSM checkpoint (default: shipped)')
    p.add_argument('--no-sim', action='store_true', help='do not start room_sim (real robot)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--image-topic', default='camera/image_raw',
                   help='camera topic; a relative name resolves in --namespace')
    p.add_argument('--cmd-vel-topic', default='cmd_vel',
                   help='command topic; a relative name resolves in --namespace')
    p.add_argument('--cmd-vel-stamped', action='store_true')
    p.add_argument('--compressed', action='store_true',
                   help='camera as CompressedImage on <image topic>/compressed (jpeg or png)')
    p.add_argument('--namespace', default='',
                   help="namespace of every node and relative topic: 'robot1' or '/robot1'")
    p.add_argument('--monitor', action='store_true',
                   help='start image_monitor: the DDPM prior stops the planner on odd frames')
    p.add_argument('--prior-checkpoint', help='image prior checkpoint (default: shipped)')
    p.add_argument('--objective', choices=['reward', 'goal_image'], default='reward',
                   help='what the planner maximises (goal_image: docs/goal_images.md)')
    p.add_argument('--goal-image-file', help='objective goal_image: plan toward this picture')
    _add_world_arg(p)
    p.set_defaults(func=cmd_up)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # progress lines from the library (cache reuse, per-evaluation metrics, early stops)
    logging.basicConfig(level=os.environ.get('WMC_LOG_LEVEL', 'INFO').upper(),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s',
                        datefmt='%H:%M:%S')
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError, TimeoutError, RuntimeError) as e:
        print(f'wmc {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
