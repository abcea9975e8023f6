"""`wmc`: the command line of world_model_ctrl (see docs/cli.md and shared design)."""
from __future__ import annotations

import argparse
import json
import sys
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
                     progress=not a.no_progress)
    print(f"wrote {result['bag']}: {result['episodes']} episodes, {result['steps']} steps in "
          f"{result['collect_s']:.1f} s ({result['steps_per_s']:.0f} steps/s)", file=sys.stderr)
    if a.json:
        _write_json(result, a.json)
    return 0


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
        print(f"  {t['name']:<28} {t['type']:<32} {t['count']:>7} msgs "
              f"{t.get('rate_hz') or 0:8.1f} Hz{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='wmc', description='world_model_ctrl command line')
    sub = ap.add_subparsers(dest='command', required=True)

    p = sub.add_parser('collect', help='record exploration episodes from room_sim into a bag')
    p.add_argument('--out', required=True, help='new rosbag2 directory to write')
    p.add_argument('--episodes', type=int, default=10)
    p.add_argument('--steps', type=int, default=50, help='commands per episode')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--policy', default='mix', choices=['random', 'ou', 'goal', 'mix'])
    p.add_argument('--storage', default='mcap', choices=['mcap', 'sqlite3'])
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--noise-std', type=float, default=0.0)
    p.add_argument('--random-goal', action='store_true')
    p.add_argument('--domain-id', type=int, default=None,
                   help='ROS_DOMAIN_ID for the sim graph (default: inherited)')
    p.add_argument('--json', help='also write the collection summary (rate) to this file')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser('bag-info', help='summarise any rosbag2')
    p.add_argument('bag')
    p.add_argument('--json', nargs='?', const='-', help='JSON to stdout, or to a file')
    p.set_defaults(func=cmd_bag_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError, TimeoutError, RuntimeError) as e:
        print(f'wmc {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
