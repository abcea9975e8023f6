"""The control graph, once: what `wmc up` starts and what launch/control.launch.py declares.

tests/test_launch.py loads the launch file against recording stand-ins for launch/launch_ros and
checks it describes the same nodes, parameter files, parameters and remappings as this.
"""
from __future__ import annotations

import yaml

from world_model_ctrl.paths import config_file
from world_model_ctrl.procs import NodeSpec
from world_model_ctrl.worlds import get_world

# (package, executable) -> Python module with main(), i.e. what `ros2 run` would start.
EXECUTABLES = {
    ('room_sim', 'room_sim'): 'room_sim.node',
    ('world_model_ctrl', 'belief'): 'world_model_ctrl.belief',
    ('world_model_ctrl', 'planner'): 'world_model_ctrl.planner',
    ('world_model_ctrl', 'image_monitor'): 'world_model_ctrl.image_monitor',
}

# Launch arguments and their defaults (strings, as launch passes them).
LAUNCH_ARGS = {
    'checkpoint': 'shipped',
    'device': 'cpu',
    'image_topic': 'camera/image_raw',     # relative: resolved in the graph's namespace
    'cmd_vel_topic': 'cmd_vel',
    'cmd_vel_stamped': 'false',
    'compressed': 'false',                  # camera as CompressedImage on <image_topic>/compressed
    'use_sim': 'true',
    'use_sim_time': 'false',
    'namespace': '',                        # 'robot1' or '/robot1'; '' = the root
    'monitor': 'false',
    'prior_checkpoint': 'shipped',
    'world': 'overhead',                    # overhead | onboard: sim, control params, model
    'objective': 'reward',                  # reward | goal_image (planner; docs/goal_images.md)
    # objective goal_image: the goal picture at start; "''" is YAML's empty string, what
    # launch_ros makes of a parameter from a substitution ('' would become null)
    'goal_image_file': "''",
}


def _bool(s) -> bool:
    return str(s).strip().lower() in ('true', '1', 'yes', 'on')


def control_graph(args: dict | None = None, params_file=None, sim_params_file=None
                  ) -> list[tuple[str, str, NodeSpec]]:
    """[(package, executable, NodeSpec)] for the given launch arguments."""
    a = {**LAUNCH_ARGS, **{k: str(v) for k, v in (args or {}).items()}}
    unknown = set(a) - set(LAUNCH_ARGS)
    if unknown:
        raise ValueError(f'unknown launch arguments {sorted(unknown)}')
    world = get_world(a['world'])
    control = str(params_file or config_file(world.control_params))
    sim = str(sim_params_file or config_file(world.sim_params))
    remaps = {'camera/image_raw': a['image_topic'], 'cmd_vel': a['cmd_vel_topic']}
    common = {'cmd_vel_stamped': _bool(a['cmd_vel_stamped']),
              'use_sim_time': _bool(a['use_sim_time'])}
    model = {'checkpoint': a['checkpoint'], 'device': a['device'], 'world': world.name,
             **common}
    nodes = []
    if _bool(a['use_sim']):
        nodes.append(('room_sim', 'room_sim', NodeSpec(
            'room_sim.node', {**common, 'world': world.name}, dict(remaps), [sim], 'room_sim')))
    compressed = {'compressed': _bool(a['compressed'])}
    # With the monitor on, the planner holds zero whenever the monitor's heartbeat stops.
    planner = {**model, 'require_monitor': _bool(a['monitor']), 'objective': a['objective'],
               'goal_image_file': str(yaml.safe_load(a['goal_image_file']) or '')}
    for exe, params in (('belief', {**model, **compressed}), ('planner', planner)):
        nodes.append(('world_model_ctrl', exe, NodeSpec(
            EXECUTABLES[('world_model_ctrl', exe)], params, dict(remaps), [control], exe)))
    if _bool(a['monitor']):
        nodes.append(('world_model_ctrl', 'image_monitor', NodeSpec(
            EXECUTABLES[('world_model_ctrl', 'image_monitor')],
            {'checkpoint': a['prior_checkpoint'], 'device': a['device'],
             'use_sim_time': common['use_sim_time'], **compressed},
            {'camera/image_raw': a['image_topic']}, [control], 'image_monitor')))
    for _, _, spec in nodes:
        spec.namespace = a['namespace']
    return nodes
