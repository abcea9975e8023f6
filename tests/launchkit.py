"""Stand-ins for launch, launch_ros and ament_index (not installable here), shared by the
launch-file tests: every action class records its constructor arguments, so a test can load a
launch file and read back the entities it describes."""
from __future__ import annotations

import types
from pathlib import Path

import pytest


def recorder(kind: str) -> type:
    """A class whose instances keep ``kind``, ``args`` and ``kwargs``."""
    class Action:
        def __init__(self, *args, **kwargs):
            self.kind, self.args, self.kwargs = kind, args, kwargs
    Action.__name__ = kind
    return Action


def standins(share: Path, substitutions: dict, parameter_value=None) -> dict:
    """{module name: module} to put in sys.modules; ``substitutions`` are the classes of
    launch.substitutions the test evaluates itself, ``parameter_value`` launch_ros's
    ParameterValue."""
    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.conditions', 'launch.substitutions', 'launch_ros',
        'launch_ros.actions', 'launch_ros.parameter_descriptions', 'ament_index_python',
        'ament_index_python.packages')}
    mods['launch'].LaunchDescription = lambda entities: list(entities)
    for kind in ('DeclareLaunchArgument', 'SetEnvironmentVariable', 'OpaqueFunction'):
        setattr(mods['launch.actions'], kind, recorder(kind))
    mods['launch.conditions'].IfCondition = recorder('IfCondition')
    for name, cls in substitutions.items():
        setattr(mods['launch.substitutions'], name, cls)
    mods['launch_ros.actions'].Node = recorder('Node')
    if parameter_value is not None:
        mods['launch_ros.parameter_descriptions'].ParameterValue = parameter_value
    mods['ament_index_python.packages'].get_package_share_directory = \
        lambda pkg: str(share) if pkg == 'world_model_ctrl' else pytest.fail(pkg)
    return mods
