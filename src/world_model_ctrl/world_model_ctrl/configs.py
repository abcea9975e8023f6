"""One rule for every dataclass config: built from plain dicts, unknown keys are an error."""
from __future__ import annotations

import math
from dataclasses import fields

# YAML 1.1 (PyYAML) reads `4e-4` as a string and `1` as an int: numbers are coerced to the
# field's declared type, anything else that is not a number is a clear error.
_NUMBER_TYPES = {'float': float, 'int': int}


def _coerce(name: str, typ, value, what: str):
    kind = _NUMBER_TYPES.get(typ if isinstance(typ, str) else getattr(typ, '__name__', ''))
    if kind is None or isinstance(value, bool) or isinstance(value, kind):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{what}: {name} must be {typ}, got {value!r}') from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f'{what}: {name} must be an integer, got {value!r}')
        return int(number)
    return number


def from_dict(cls, d: dict, what: str):
    """``cls(**d)``, naming any key ``cls`` does not have (a typo must not pass silently)."""
    types = {f.name: f.type for f in fields(cls)}
    unknown = set(d) - set(types)
    if unknown:
        raise ValueError(f'unknown {what}: {sorted(unknown)}')
    return cls(**{k: _coerce(k, types[k], v, what) for k, v in d.items()})


def check_positive(cfg, section: str, *names: str) -> None:
    """ValueError unless each named field is a finite number > 0 (e.g. a learning rate)."""
    for name in names:
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                or v <= 0:
            raise ValueError(f'{section}.{name} must be a finite number > 0, got {v!r}')
