"""Where installed files live: share/world_model_ctrl (colcon/ament) or the source checkout."""
from __future__ import annotations

from pathlib import Path

PACKAGE = 'world_model_ctrl'
_SOURCE_ROOT = Path(__file__).resolve().parents[1]      # src/world_model_ctrl in a checkout


def share_dir() -> Path:
    """share/world_model_ctrl of an ament install, else the package's source folder."""
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, OSError):     # not installed, or no ament env
            pass
    except ImportError:
        pass
    return _SOURCE_ROOT


def default_checkpoint(name: str) -> Path:
    """The shipped checkpoint ``name`` (e.g. 'ssm.pt'), with a clear error if it is absent."""
    for base in (share_dir(), _SOURCE_ROOT):
        path = base / 'models' / name
        if path.exists():
            return path
    raise FileNotFoundError(f'no shipped checkpoint models/{name} under {share_dir()}; '
                            'pass --ckpt / checkpoint:=PATH')


def config_file(name: str) -> Path:
    for base in (share_dir(), _SOURCE_ROOT):
        path = base / 'config' / name
        if path.exists():
            return path
    raise FileNotFoundError(f'no config/{name} under {share_dir()}')


def resolve_checkpoint(value, name: str) -> Path:
    """'' / 'shipped' / None -> the shipped checkpoint ``name``; anything else is a path."""
    if value in (None, '', 'shipped'):
        return default_checkpoint(name)
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    return path
