"""What the model's action vector means, recorded in the checkpoint and checked by the nodes.

A world model is trained on some command fields (``linear.x, linear.y`` for the holonomic room,
``linear.x, angular.z`` for a differential-drive base) within some range per field (m/s for
linear, rad/s for angular). Training records both in the checkpoint's extra as
``{'action': {'fields': [...], 'bounds': [...]}}`` (bound = the largest |value| of the field in
the training data, rounded up to two significant digits). The belief and planner nodes refuse
other fields, and the planner refuses a limit above the trained bound (the model knows nothing
of faster motion); a lower limit is a speed cap.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (0.4999 -> 0.5, 1.234 -> 1.3)."""
    if x <= 0 or not math.isfinite(x):
        return 0.0
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    # float32 data: 0.1 is 0.10000000149, which must not round up to 0.11
    return math.ceil(round(x * scale, 4)) / scale


def action_spec(fields: Sequence[str], actions: np.ndarray) -> dict:
    """{'fields', 'bounds'} of training data ``actions`` (N, A) for the checkpoint."""
    actions = np.asarray(actions, np.float64).reshape(-1, len(fields))
    peak = np.abs(actions).max(axis=0) if len(actions) else np.zeros(len(fields))
    return {'fields': list(fields), 'bounds': [round_up(float(v)) for v in peak]}


def trained_spec(extra: dict) -> Optional[dict]:
    """The checkpoint's action spec, or None for a checkpoint written before it was recorded."""
    spec = (extra or {}).get('action')
    if not spec:
        return None
    fields, bounds = list(spec.get('fields') or []), list(spec.get('bounds') or [])
    if not fields or len(fields) != len(bounds):
        raise ValueError(f'checkpoint action spec is malformed: {spec!r}')
    return {'fields': fields, 'bounds': [float(b) for b in bounds]}


def check_fields(fields: Sequence[str], spec: Optional[dict], ckpt) -> None:
    """Refuse ``action_fields`` other than (and in another order than) the trained ones."""
    if spec is not None and list(fields) != spec['fields']:
        raise ValueError(f'action_fields {list(fields)} do not match the fields {ckpt} was '
                         f'trained on: {spec["fields"]} (set action_fields to those, or train '
                         f'a model on commands with these fields)')


def resolve_limits(fields: Sequence[str], limits: Sequence[float], spec: Optional[dict],
                   ckpt) -> np.ndarray:
    """Per-field command limits of the planner: ``limits`` (one per field; empty = the
    trained bounds). Below the trained bound a limit is a speed cap; above it, refused.
    Without a recorded spec (an older checkpoint) the limits must be given."""
    n = len(fields)
    limits = [float(v) for v in limits]
    if limits and len(limits) != n:
        raise ValueError(f'action_limits has {len(limits)} values for {n} action_fields '
                         f'{list(fields)}')
    if any(not (v > 0 and math.isfinite(v)) for v in limits):
        raise ValueError(f'action_limits must be positive, got {limits}')
    if spec is None:
        if not limits:
            raise ValueError(f'{ckpt} does not record the action bounds it was trained with: '
                             f'set action_limits (one per field of {list(fields)})')
        return np.array(limits, np.float64)
    bounds = np.array(spec['bounds'], np.float64)
    out = np.array(limits, np.float64) if limits else bounds
    above = [f'{f}: {v:g} > {b:g}' for f, v, b in zip(fields, out, bounds) if v > b]
    if above:
        raise ValueError(f'action_limits above what {ckpt} was trained on ({"; ".join(above)}): '
                         f'the model cannot predict faster motion; lower the limits or train '
                         f'on faster commands')
    return out
