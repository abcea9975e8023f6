"""One rule for every dataclass config: built from plain dicts, unknown keys are an error."""
from __future__ import annotations

from dataclasses import fields


def from_dict(cls, d: dict, what: str):
    """``cls(**d)``, naming any key ``cls`` does not have (a typo must not pass silently)."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f'unknown {what}: {sorted(unknown)}')
    return cls(**d)
