"""`wmc improve`: rounds of planner episodes -> fine-tune -> evaluate, table, plot, resume."""
import json
from dataclasses import asdict

import pytest

from world_model_ctrl.checkpoint import load_checkpoint
from world_model_ctrl.data import DataConfig, load_episodes
from world_model_ctrl.improve import improve
from world_model_ctrl.planner_data import collect_planner
from world_model_ctrl.ssm import SSMConfig, WorldModel
from world_model_ctrl.train_ssm import TrainConfig


@pytest.fixture(scope='module')
def start(tmp_path_factory):
    """A small 64x64 model that records its recipe (as train-ssm writes it) and a base bag."""
    import torch
    d = tmp_path_factory.mktemp('improve')
    torch.manual_seed(0)
    model = WorldModel(SSMConfig.from_preset('debug', image_size=64))
    train = TrainConfig(steps=1, batch_size=4, seq_len=8, log_every=1, eval_every=50,
                        ckpt_every=50, val_windows=4, warmup=1, device='cpu')
    ckpt = d / 'start.pt'
    model.save(ckpt, extra={'frame_interval_s': 0.1, 'step': 0,
                            'action': {'fields': ['linear.x', 'linear.y'], 'bounds': [0.5, 0.5]},
                            'data': DataConfig(image_size=64).to_dict(), 'train': asdict(train)})
    base = d / 'base'
    collect_planner(base, str(ckpt), episodes=3, steps=10, seed=1, progress=False)
    return ckpt, base


def test_rounds_collect_fine_tune_evaluate_and_resume(start, tmp_path):
    ckpt, base = start
    out = tmp_path / 'run'
    kw = dict(world='overhead', ckpt=str(ckpt), episodes=2, steps=10, train_steps=3,
              eval_episodes=2, eval_seed=4, seed=9, progress=False, log=lambda m: None)
    state = improve(out, [base], 1, **kw)
    rows = state['rounds']
    assert [r['round'] for r in rows] == [0, 1]
    assert all(0.0 <= r['success_rate'] <= 1.0 for r in rows)
    assert rows[0]['step'] == 0 and rows[1]['step'] == 3 and rows[1]['train_to'] == 3
    # round 1's bag: the current planner's episodes, readable like any recording
    assert len(load_episodes(out / 'round_1', DataConfig(image_size=64))) == 2
    assert rows[1]['collect'] == {'episodes': 2, 'steps': 20, 'transport': 'none',
                                  'reached': rows[1]['collect']['reached']}
    assert load_checkpoint(out / 'model.pt', 'ssm')['extra']['step'] == 3
    assert json.loads((out / 'improve.json').read_text())['rounds'] == rows
    assert (out / 'improve.png').stat().st_size > 1000
    # continue: rounds 0-1 are kept as they were, round 2 trains 3 more steps on 3 bags
    bag1 = (out / 'round_1' / 'metadata.yaml').stat().st_mtime_ns
    state = improve(out, [base], 2, **kw)
    assert state['rounds'][:2] == rows
    assert state['rounds'][2]['step'] == 6
    assert (out / 'round_1' / 'metadata.yaml').stat().st_mtime_ns == bag1
    # interrupted after its bag and its fine-tune: the rerun reuses both and re-evaluates
    bag2 = (out / 'round_2' / 'metadata.yaml').stat().st_mtime_ns
    cut = json.loads((out / 'improve.json').read_text())
    del cut['rounds'][2]['success_rate']
    (out / 'improve.json').write_text(json.dumps(cut))
    state = improve(out, [base], 2, **kw)
    assert state['rounds'][2]['step'] == 6 and 'success_rate' in state['rounds'][2]
    assert (out / 'round_2' / 'metadata.yaml').stat().st_mtime_ns == bag2
    # episodes too short for the recorded training windows (8 frames): refused before anything
    with pytest.raises(ValueError, match='shorter than the fine-tune'):
        improve(tmp_path / 'short', [base], 1, **{**kw, 'steps': 6})
    assert not (tmp_path / 'short' / 'round_1').exists()
    # other settings are refused, not mixed into the same table
    with pytest.raises(ValueError, match='other settings'):
        improve(out, [base], 3, **{**kw, 'noise': 0.5})


def test_ros_collection_records_the_planners_commands_with_noise(start, tmp_path, ros_domain):
    """`collect-planner --ros` (and `improve --ros`): the nodes (sim, belief, planner with
    exploration_noise, recorder) record a bag whose episodes hold the very commands the
    ROS-free loop writes for the same arguments, noise included."""
    import numpy as np

    from world_model_ctrl.planner_data import collect_planner_ros
    ckpt, _ = start
    cfg = DataConfig(image_size=64)
    kw = dict(episodes=2, steps=8, seed=5, noise=0.4, progress=False)
    r = collect_planner_ros(tmp_path / 'ros', str(ckpt), domain_id=ros_domain, **kw)
    assert r['transport'] == 'ros' and r['episodes'] == 2 and r['steps'] >= 16, r
    free = collect_planner(tmp_path / 'free', str(ckpt), **kw)
    calm = collect_planner(tmp_path / 'calm', str(ckpt), **{**kw, 'noise': 0.0})
    over_ros, over_free, no_noise = (load_episodes(b, cfg) for b in (
        r['bag'], free['bag'], calm['bag']))
    # over ROS the start-up frame is answered before the first reset: a short lead-in episode
    assert len(over_ros) in (2, 3) and len(over_free) == 2
    assert len(over_ros) == 2 or len(over_ros[0]) < 9
    for e_ros, e_free, e_calm in zip(over_ros[-2:], over_free, no_noise):
        assert len(e_ros) >= 9
        np.testing.assert_allclose(e_ros.actions[1:9], e_free.actions[1:9], atol=1e-5)
        np.testing.assert_array_equal(e_ros.images[:9], e_free.images[:9])
        assert np.abs(e_free.actions[1:9] - e_calm.actions[1:9]).max() > 0.05  # noise added
        assert np.all(np.abs(e_ros.actions) <= 0.5 + 1e-6)                    # within limits
    # improve --ros: round 1 is collected through the nodes
    out = tmp_path / 'run'
    state = improve(out, [free['bag']], 1, world='overhead', ckpt=str(ckpt), episodes=1,
                    steps=8, train_steps=1, eval_episodes=1, eval_seed=4, seed=9,
                    progress=False, log=lambda m: None, ros=True, domain_id=ros_domain)
    assert state['rounds'][1]['collect']['transport'] == 'ros'
    assert len(load_episodes(out / 'round_1', cfg)) == 1
