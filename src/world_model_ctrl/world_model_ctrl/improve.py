"""`wmc improve`: rounds of data aggregation (PlaNet): the planner's own episodes -> fine-tune on
every bag -> evaluate, with a table and a plot per round; resumable.

    wmc improve --world onboard --bags data/onboard_train --out runs/improve --rounds 3

Round 0 evaluates the starting checkpoint. Round k >= 1:

1. collects ``episodes`` episodes of the current planner with Gaussian exploration noise
   (``noise`` x each command field's limit) from seeded starts into ``OUT/round_k``: by default
   in the ROS-free lockstep loop of `wmc collect-planner` (world, filter and CEM as the nodes
   run them), with ``--ros`` through the nodes themselves (room_sim, belief, planner with
   ``exploration_noise``, recorder; `wmc collect-planner --ros`), the same commands;
2. fine-tunes ``OUT/model.pt`` (`train-ssm --resume`) for ``train_steps`` more steps on the base
   bags and every round's bag, with the recipe the checkpoint records (model, data and train
   configs; ``overrides`` as `--set`, e.g. ``model.overshoot=10``);
3. evaluates it (`wmc eval --no-ros`, ``eval_episodes`` from ``eval_seed``) and appends a row.

``OUT/improve.json`` holds the settings and the rows; run the same command again (with more
``rounds``) to continue: finished rounds are kept, a bag already written is reused and an
interrupted fine-tune resumes from its last checkpoint. ``OUT/improve.png`` plots success and
steps per round. On a real robot a round is recorded instead of collected: docs/real_robot.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from world_model_ctrl.checkpoint import load_checkpoint

SETTINGS = ('world', 'ckpt', 'bags', 'episodes', 'steps', 'noise', 'train_steps',
            'eval_episodes', 'eval_seed', 'seed', 'params_file', 'overrides')


def _fine_tune_config(ckpt: Path, steps: int, overrides: dict) -> dict:
    """The model/data/train configs the checkpoint records, ``steps`` in total, + overrides."""
    from world_model_ctrl.data import DataConfig
    from world_model_ctrl.ssm import SSMConfig
    from world_model_ctrl.train_ssm import TrainConfig
    c = load_checkpoint(ckpt, 'ssm')
    extra = c.get('extra') or {}
    if 'data' not in extra or 'train' not in extra:
        raise ValueError(f'{ckpt} does not record its data/train configs (written by an older '
                         'train-ssm): fine-tune it with wmc train-ssm --resume instead')
    over = {k: dict(overrides.get(k) or {}) for k in ('model', 'data', 'train')}
    return {'model': SSMConfig.from_dict({**c['config'], **over['model']}),
            'data': DataConfig.from_dict({**extra['data'], **over['data']}),
            'train': TrainConfig.from_dict({**extra['train'], **over['train'],
                                            'steps': steps})}


def _plot(rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    k = [r['round'] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(k, [r['success_rate'] for r in rows], 'o-')
    ax[0].set(xlabel='round', ylabel='success rate', ylim=(0, 1.05))
    ax[1].plot(k, [r.get('steps_ratio_vs_oracle') or float('nan') for r in rows], 'o-')
    ax[1].set(xlabel='round', ylabel='steps / oracle steps')
    for a in ax:
        a.set_xticks(k)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: list) -> str:
    lines = ['round  success  steps/oracle  round bag reached goal  train step  val reward ll']
    for r in rows:
        ratio = r.get('steps_ratio_vs_oracle')
        reached = r.get('collect', {}).get('reached')
        lines.append(f"{r['round']:>5}  {r['success_rate']:7.2f}  "
                     f"{'-' if ratio is None else f'{ratio:.2f}':>12}  "
                     f"{'-' if reached is None else f'{reached:.2f}':>22}  "
                     f"{r.get('step', '-'):>10}  "
                     f"{r.get('val_reward_loglik', float('nan')):13.3f}")
    return '\n'.join(lines)


def improve(out, bags, rounds: int, world: str = 'overhead', ckpt=None, episodes: int = 100,
            steps: int = 50, noise: float = 0.3, train_steps: int = 1000,
            eval_episodes: int = 20, eval_seed: int = 1000, seed: int = 0,
            params_file=None, overrides: dict | None = None, progress: bool = True,
            log=print, ros: bool = False, domain_id: int | None = None) -> dict:
    """Run (or continue) rounds 0..``rounds``; returns the state written to improve.json.
    ``ros``: collect through the ROS graph (`collect_planner_ros`) instead of without it."""
    from world_model_ctrl.offline_loop import run_offline
    from world_model_ctrl.paths import resolve_checkpoint
    from world_model_ctrl.planner_data import collect_planner, collect_planner_ros
    from world_model_ctrl.train_ssm import train
    from world_model_ctrl.worlds import get_world
    if rounds < 0:
        raise ValueError(f'--rounds must be >= 0, got {rounds}')
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, model = out / 'improve.json', out / 'model.pt'
    start = str(resolve_checkpoint(ckpt or 'shipped', get_world(world).checkpoint))
    settings = {'world': world, 'ckpt': start, 'bags': [str(b) for b in bags],
                'episodes': episodes, 'steps': steps, 'noise': noise,
                'train_steps': train_steps, 'eval_episodes': eval_episodes,
                'eval_seed': eval_seed, 'seed': seed,
                'params_file': str(params_file) if params_file else None,
                'overrides': overrides or {}}
    if state_path.exists():
        state = json.loads(state_path.read_text())
        changed = {k: (state['settings'].get(k), settings[k]) for k in SETTINGS
                   if state['settings'].get(k) != settings[k]}
        if changed:
            raise ValueError(f'{out} holds rounds made with other settings (then vs now): '
                             f'{changed}; continue with the same ones or use a new --out')
    else:
        seq_len = _fine_tune_config(Path(start), 1, overrides or {})['train'].seq_len \
            if rounds > 0 else 0
        if steps + 1 < seq_len:
            raise ValueError(f'--steps {steps} gives episodes of {steps + 1} frames, shorter than '
                             f"the fine-tune's training windows ({seq_len} frames, recorded in "
                             f'{start}): use --steps {seq_len - 1} or more')
        state = {'settings': settings, 'rounds': []}
        shutil.copyfile(start, model)

    def save():
        state_path.write_text(json.dumps(state, indent=1))
        _plot([r for r in state['rounds'] if 'success_rate' in r], out / 'improve.png')

    def evaluate(row: dict) -> None:
        s = run_offline(str(model), eval_episodes, eval_seed, world=world,
                        params_file=params_file, progress=progress)
        row.update({k: s.get(k) for k in ('success_rate', 'mean_steps', 'oracle_mean_steps',
                                           'steps_ratio_vs_oracle', 'plan_ms_p50')})
        row['step'] = int(load_checkpoint(model, 'ssm')['extra'].get('step', 0))

    rows = state['rounds']
    for k in range(rounds + 1):
        if k < len(rows) and 'success_rate' in rows[k]:
            continue                                    # finished earlier
        if k == len(rows):
            rows.append({'round': k})
        row = rows[k]
        if k > 0:
            bag = out / f'round_{k}'
            if not bag.exists():
                partial = out / f'round_{k}.partial'
                shutil.rmtree(partial, ignore_errors=True)
                log(f'round {k}: collecting {episodes} planner episodes into {bag}'
                    + (' over ROS' if ros else ''))
                if ros:
                    c = collect_planner_ros(partial, str(model), episodes, steps, seed + k,
                                            noise, world, params_file, domain_id=domain_id,
                                            progress=progress)
                else:
                    c = collect_planner(partial, str(model), episodes, steps, seed + k, noise,
                                        world, params_file, progress=progress)
                partial.rename(bag)
                row['collect'] = {'episodes': c['episodes'], 'steps': c['steps'],
                                  'reached': c['reached_goal_fraction'],
                                  'transport': c['transport']}
            row['bag'] = str(bag)
            if 'train_to' not in row:
                row['train_to'] = int(load_checkpoint(model, 'ssm')['extra'].get('step', 0)) \
                    + train_steps
                save()
            all_bags = [*settings['bags'], *[r['bag'] for r in rows[1:k + 1]]]
            log(f'round {k}: fine-tuning to step {row["train_to"]} on {len(all_bags)} bags')
            summary = train(all_bags, model, _fine_tune_config(
                model, row['train_to'], settings['overrides']), resume=True,
                progress=progress)
            row.update({k2: summary[k2] for k2 in ('val_elbo', 'val_reward_loglik',
                                                    'val_overshoot_reward_loglik')
                        if k2 in summary})
        log(f'round {k}: evaluating ({eval_episodes} episodes, seed {eval_seed})')
        evaluate(row)
        save()
        log(table(rows[:k + 1]))
    save()
    return state
