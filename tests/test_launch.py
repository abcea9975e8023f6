"""launch/control.launch.py and `wmc up` (graph.control_graph) describe the same graph.

launch/launch_ros are not installable here, so the launch file is loaded against small recording
stand-ins that evaluate substitutions and typed parameters the way launch_ros does.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import yaml

from launchkit import standins

from world_model_ctrl.cli import build_parser
from world_model_ctrl.graph import LAUNCH_ARGS, control_graph
from world_model_ctrl.paths import config_file, share_dir
from world_model_ctrl.procs import NodeSpec

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'control.launch.py'


class _Subst:
    def __init__(self, name):
        self.name = name


class _PyExpr:                  # launch.substitutions.PythonExpression
    def __init__(self, parts):
        self.parts = parts


class _PathJoin:                # launch.substitutions.PathJoinSubstitution
    def __init__(self, parts):
        self.parts = parts


def _standins(share: Path) -> dict:
    return standins(share, {'LaunchConfiguration': _Subst, 'PythonExpression': _PyExpr,
                            'PathJoinSubstitution': _PathJoin})


def launched_graph(args: dict, monkeypatch) -> list[tuple]:
    for name, mod in _standins(share_dir()).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('control_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description()
    declared = {e.kwargs['name'] if 'name' in e.kwargs else e.args[0]: e.kwargs['default_value']
                for e in entities if e.kind == 'DeclareLaunchArgument'}
    values = {**declared, **args}

    def ev(x):
        if isinstance(x, _Subst):
            return values[x.name]
        if isinstance(x, list):             # a list of substitutions is their concatenation
            return ''.join(ev(p) for p in x)
        if isinstance(x, _PyExpr):
            return str(eval(ev(x.parts)))
        if isinstance(x, _PathJoin):
            return os.path.join(*(ev(p) for p in x.parts))
        return x

    def typed(x):               # launch_ros yaml-parses parameter values from substitutions
        return yaml.safe_load(ev(x)) if isinstance(x, _Subst) else x

    nodes = []
    for e in entities:
        if e.kind != 'Node':
            continue
        cond = e.kwargs.get('condition')
        if cond is not None and ev(cond.args[0]).lower() not in ('true', '1'):
            continue
        files = [ev(p) for p in e.kwargs['parameters'] if not isinstance(p, dict)]
        params = {}
        for p in e.kwargs['parameters']:
            if isinstance(p, dict):
                params.update({k: typed(v) for k, v in p.items()})
        nodes.append((e.kwargs['package'], e.kwargs['executable'], e.kwargs['name'],
                      ev(e.kwargs.get('namespace', '')), files, params,
                      {k: ev(v) for k, v in e.kwargs.get('remappings', [])}))
    env = {e.args[0]: e.args[1] for e in entities if e.kind == 'SetEnvironmentVariable'}
    return declared, nodes, env


def up_graph(args: dict) -> list[tuple]:
    return [(pkg, exe, s.name, s.namespace, [str(f) for f in s.params_files], s.params, s.remaps)
            for pkg, exe, s in control_graph(args)]


@pytest.mark.parametrize('args', [
    {},
    {'use_sim': 'false', 'image_topic': '/front/image_raw', 'cmd_vel_topic': '/base/cmd_vel',
     'cmd_vel_stamped': 'true', 'namespace': 'robot1', 'checkpoint': '/models/ssm.pt',
     'device': 'cuda', 'use_sim_time': 'true', 'monitor': 'true',
     'prior_checkpoint': '/models/prior.pt'},
    {'namespace': '/robot2'},
    {'namespace': 'robot1', 'use_sim': 'false', 'monitor': 'true', 'compressed': 'true'},
    {'objective': 'goal_image', 'goal_image_file': '/goals/kitchen.png'},
])
def test_launch_file_and_wmc_up_describe_the_same_graph(args, monkeypatch):
    declared, launched, _ = launched_graph(args, monkeypatch)
    assert declared == LAUNCH_ARGS
    assert launched == up_graph(args)
    names = [n[1] for n in launched]
    assert names == (['belief', 'planner', 'image_monitor'] if args.get('use_sim') == 'false'
                     else ['room_sim', 'belief', 'planner'])


def test_graph_params_files_exist_and_unknown_args_fail():
    for _, _, spec in control_graph():
        assert all(Path(f).is_file() for f in spec.params_files)
    with pytest.raises(ValueError, match='unknown launch arguments'):
        control_graph({'image_topik': '/x'})


def test_default_topics_are_relative_so_a_namespace_moves_them():
    assert LAUNCH_ARGS['image_topic'] == 'camera/image_raw'
    assert LAUNCH_ARGS['cmd_vel_topic'] == 'cmd_vel'
    up = build_parser().parse_args(['up'])
    assert (up.image_topic, up.cmd_vel_topic) == ('camera/image_raw', 'cmd_vel')
    for _, _, spec in control_graph({'monitor': 'true'}):
        assert not any(v.startswith('/') for v in spec.remaps.values()), spec.remaps


@pytest.mark.parametrize('ns, expect', [
    ('robot1', '/robot1'), ('/robot1', '/robot1'), ('/robot1/', '/robot1'),
    ('fleet/robot1', '/fleet/robot1'), ('', None), ('/', None)])
def test_node_argv_passes_a_fully_qualified_namespace(ns, expect):
    argv = NodeSpec('m', name='planner', namespace=ns).argv()
    rules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '-r']
    got = [r for r in rules if r.startswith('__ns:=')]
    assert got == ([f'__ns:={expect}'] if expect else [])


@pytest.mark.parametrize('name', ['control.yaml', 'sim.yaml', 'record.yaml'])
def test_params_files_apply_under_any_namespace(name):
    """`planner:` would only match /planner; `/**/planner:` matches it in every namespace."""
    keys = list(yaml.safe_load(config_file(name).read_text()))
    assert keys and all(k.startswith('/**/') for k in keys), keys
    if name != 'record.yaml':
        nodes = {spec.name for _, _, spec in control_graph({'monitor': 'true'})
                 if str(config_file(name)) in map(str, spec.params_files)}
        assert nodes and nodes <= {k[len('/**/'):] for k in keys}


def test_compressed_reaches_belief_and_monitor_only():
    graph = {exe: spec for _, exe, spec in control_graph({'compressed': 'true',
                                                          'monitor': 'true'})}
    assert graph['belief'].params['compressed'] is True
    assert graph['image_monitor'].params['compressed'] is True
    assert 'compressed' not in graph['planner'].params
    assert all(not spec.params.get('compressed') for _, _, spec in control_graph())


def test_launch_and_wmc_up_give_the_nodes_the_fastdds_profile_unless_set(monkeypatch):
    """Large frames need config/fastdds.xml (docs/control.md "Camera transport"): both ways of
    starting the graph set it, and a profile the user chose wins."""
    from world_model_ctrl.procs import ros_env
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    _, _, env = launched_graph({}, monkeypatch)
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': str(share_dir() / 'config' / 'fastdds.xml')}
    assert Path(env['FASTDDS_DEFAULT_PROFILES_FILE']).is_file()
    assert ros_env()['FASTDDS_DEFAULT_PROFILES_FILE'] == str(config_file('fastdds.xml'))
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/my/profile.xml')
    assert launched_graph({}, monkeypatch)[2] == {}
    assert ros_env()['FASTDDS_DEFAULT_PROFILES_FILE'] == '/my/profile.xml'


def test_wmc_prints_the_profile_path_for_the_camera_driver(capsys):
    from world_model_ctrl.cli import main
    assert main(['fastdds-profile']) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == config_file('fastdds.xml') and '<segment_size>' in path.read_text()
