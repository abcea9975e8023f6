"""`colcon build` leaves executables, launch files, params and markers where ROS 2 looks."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).parent / 'colcon'


@pytest.fixture(scope='module')
def install(tmp_path_factory):
    if not COLCON.exists():
        pytest.fail(f'colcon not found next to {sys.executable}: run `make setup`')
    base = tmp_path_factory.mktemp('colcon')
    ws = base / 'ws'
    # Build a copy of the workspace so the test never writes into the checkout.
    shutil.copytree(REPO, ws, symlinks=True, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'build', 'install', 'log', 'out', '*.egg-info', '__pycache__'))
    proc = subprocess.run([str(COLCON), 'build'], cwd=ws / 'ros2_ws',
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws / 'ros2_ws' / 'install'


def test_executables_where_ros2_run_looks(install):
    for pkg, exe in [('room_sim', 'room_sim'), ('world_model_ctrl', 'wmc'),
                     ('world_model_ctrl', 'recorder'), ('world_model_ctrl', 'explorer'),
                     ('world_model_ctrl', 'pose_reward')]:
        path = install / pkg / 'lib' / pkg / exe
        assert path.is_file() and os.access(path, os.X_OK), path


def test_launch_config_and_index_markers_installed(install):
    share = install / 'world_model_ctrl' / 'share' / 'world_model_ctrl'
    launch = sorted(p.name for p in (share / 'launch').iterdir())
    config = sorted(p.name for p in (share / 'config').iterdir())
    assert launch == sorted(p.name for p in (REPO / 'launch').glob('*.launch.py'))
    assert config == sorted(p.name for p in (REPO / 'config').iterdir()
                            if p.suffix in ('.yaml', '.xml'))
    assert 'fastdds.xml' in config
    assert (share / 'package.xml').is_file()
    for pkg in ('room_sim', 'world_model_ctrl'):
        marker = install / pkg / 'share' / 'ament_index' / 'resource_index' / 'packages' / pkg
        assert marker.is_file()


def test_installed_packages_import_from_install_space(install):
    site = sorted(install.glob('*/lib/python3*/site-packages'))
    assert len(site) == 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, site)))
    code = ('import room_sim.world, world_model_ctrl.policies, sys; '
            'print(room_sim.world.__file__)')
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd='/',
                         capture_output=True, text=True, check=True).stdout
    assert str(install) in out
