"""Self-describing checkpoints: weights + the resolved config + plain-python extras, one file.

Loaded with ``weights_only=True``, so a checkpoint can never run code; that is also why
config and extra are converted to plain Python (numpy scalars would not load back). A tensor
with NaN/inf values is refused both ways: never written, never loaded (the robot must not be
driven by a diverged model), with the tensor named.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
_KEYS = ('format_version', 'kind', 'config', 'state_dict', 'extra')


def _plain(obj, where: str):
    """Recursively convert to types torch.load(weights_only=True) accepts; fail early if not."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f'{where}: dict key {k!r} must be str or int')
            out[k] = _plain(v, f'{where}[{k!r}]')
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f'{where}[{i}]') for i, v in enumerate(obj)]
    raise TypeError(f'{where}: {type(obj).__name__} is not storable in a checkpoint '
                    f'(use plain python: numbers, strings, lists, dicts)')


def _first_nonfinite(obj, name: str) -> Optional[tuple[str, int]]:
    """(name, count) of the first float tensor in ``obj`` (nested dicts/lists) with NaN/inf."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            finite = int(torch.isfinite(obj).sum())
            if finite < obj.numel():
                return name, obj.numel() - finite
        return None
    items = obj.items() if isinstance(obj, dict) else \
        enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _first_nonfinite(v, f'{name}[{k!r}]')
        if bad:
            return bad
    return None


def nonfinite_tensor(state_dict: dict, extra: Optional[dict] = None) -> Optional[tuple[str, int]]:
    """(tensor name, number of NaN/inf values) of the first non-finite tensor, or None."""
    for k, v in state_dict.items():
        bad = _first_nonfinite(v, k)
        if bad:
            return bad
    return _first_nonfinite(extra or {}, 'extra')


def save_checkpoint(path, kind: str, config: dict, state_dict, extra: Optional[dict] = None
                    ) -> Path:
    """Write {'format_version', 'kind', 'config', 'state_dict', 'extra'} atomically to ``path``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f'checkpoint kind must be a non-empty string, got {kind!r}')
    if not isinstance(config, dict):
        raise TypeError(f'config must be a dict, got {type(config).__name__}')
    path = Path(path)
    payload = {
        'format_version': FORMAT_VERSION,
        'kind': kind,
        'config': _plain(config, 'config'),
        # detached CPU copies: loadable on any machine, never aliased to live parameters
        'state_dict': {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        'extra': _plain(extra or {}, 'extra'),
    }
    bad = nonfinite_tensor(payload['state_dict'], payload['extra'])
    if bad:     # a diverged model must not replace a good checkpoint
        raise ValueError(f'refusing to write {path}: tensor {bad[0]!r} has {bad[1]} non-finite '
                         f'values (NaN/inf)')
    path.parent.mkdir(parents=True, exist_ok=True)
    # tmp file in the same directory so os.replace is an atomic rename: a reader (or a crash)
    # never sees a half-written checkpoint
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)        # mkstemp makes it private; a checkpoint is a normal file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, kind: Optional[str]) -> dict:
    """Read a checkpoint written by save_checkpoint; ``kind=None`` accepts any kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        ckpt = torch.load(path, weights_only=True, map_location='cpu')
    except Exception as e:   # torch raises many types on foreign bytes (even IndexError)
        raise ValueError(f'{path} is not a readable checkpoint: {type(e).__name__}: '
                         f'{str(e).splitlines()[0] if str(e) else ""}') from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in _KEYS):
        raise ValueError(f'{path} is not a world_model_ctrl checkpoint '
                         f'(expected a dict with keys {list(_KEYS)})')
    if ckpt['format_version'] not in SUPPORTED_VERSIONS:
        raise ValueError(f'{path}: unsupported checkpoint format_version '
                         f'{ckpt["format_version"]!r} (readable: {list(SUPPORTED_VERSIONS)})')
    if kind is not None and ckpt['kind'] != kind:
        raise ValueError(f'{path} holds a {ckpt["kind"]!r} checkpoint, expected {kind!r}')
    if not isinstance(ckpt['state_dict'], dict):
        raise ValueError(f'{path}: state_dict is a {type(ckpt["state_dict"]).__name__}, '
                         f'not a dict of tensors')
    bad = nonfinite_tensor(ckpt['state_dict'], ckpt['extra'])
    if bad:
        raise ValueError(f'{path}: tensor {bad[0]!r} has {bad[1]} non-finite values (NaN/inf); '
                         f'refusing to load a corrupt checkpoint')
    return ckpt


def check_state_dict(expected: dict, got: dict, path, what: str) -> None:
    """Name the missing, unexpected and mis-shaped tensors instead of a raw torch traceback."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f'{k}: checkpoint {tuple(got[k].shape)} vs config {tuple(expected[k].shape)}'
              for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = ([f'missing keys {missing}'] if missing else []) \
            + ([f'unexpected keys {unexpected}'] if unexpected else []) \
            + (['shape mismatches [' + '; '.join(shapes) + ']'] if shapes else [])
        raise ValueError(f'{path}: state_dict does not match the stored {what} config: '
                         + ', '.join(parts))


def load_model(model_cls, config_cls, path, kind: str, what: str, device='cpu'):
    """Build ``model_cls(config)`` from the config stored in the checkpoint and load its
    weights, with clear errors for a bad config or weights that do not fit it."""
    ckpt = load_checkpoint(path, kind)
    try:
        cfg = config_cls.from_dict(ckpt['config'])
    except (TypeError, ValueError) as e:
        raise ValueError(f'{path}: bad {what} config in checkpoint: {e}') from None
    model = model_cls(cfg)
    check_state_dict(model.state_dict(), ckpt['state_dict'], path, what)
    model.load_state_dict(ckpt['state_dict'])
    model.checkpoint_extra = ckpt.get('extra') or {}
    return model.to(device).eval()


def export_checkpoint(src, dst, drop=('optimizer', 'raw_state_dict'),
                      overwrite: bool = False, add: Optional[dict] = None) -> Path:
    """Copy a checkpoint without training-only state (optimizer, raw non-EMA weights), with
    the entries of ``add`` set in its extra.

    ``dst`` must not exist unless ``overwrite``, and is never ``src`` itself (a failed export
    would otherwise lose the only copy of the optimizer state).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve() or (src.exists() and dst.exists()
                                          and os.path.samefile(src, dst)):
        raise ValueError(f'export: {dst} is the source checkpoint {src} itself; write the copy '
                         f'to another path')
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise FileExistsError(f'export: {dst} exists; pass --force to overwrite it')
    ckpt = load_checkpoint(src, None)
    extra = {k: v for k, v in ckpt['extra'].items() if k not in drop}
    extra.update(add or {})
    return save_checkpoint(dst, ckpt['kind'], ckpt['config'], ckpt['state_dict'], extra)


__all__ = ['save_checkpoint', 'load_checkpoint', 'load_model', 'export_checkpoint',
           'check_state_dict', 'nonfinite_tensor',
           'FORMAT_VERSION']
