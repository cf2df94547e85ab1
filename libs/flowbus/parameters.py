"""A run's parameters: the flow's defaults, then its group's defaults, then what the run supplies."""

from __future__ import annotations

from typing import Any

from flowbus.schemas.common import ValidationFailed
from flowbus.schemas.flows import ParameterSpec


def merge_parameters(
    declared: list[ParameterSpec], group_defaults: dict[str, Any], supplied: dict[str, Any]
) -> dict[str, Any]:
    """Flow defaults, then group defaults, then the supplied values.

    Unknown names are refused (1.x silently accepted them), and so is a
    required parameter that nothing supplies.
    """
    names = {p.name for p in declared}
    unknown = sorted(set(supplied) - names)
    if unknown:
        raise ValidationFailed(f"Unknown parameters were supplied: {unknown}")
    merged: dict[str, Any] = {p.name: p.default for p in declared if not p.required}
    merged.update({k: v for k, v in group_defaults.items() if k in names})
    merged.update(supplied)
    missing = sorted(p.name for p in declared if p.required and p.name not in merged)
    if missing:
        raise ValidationFailed(f"Required parameters were not supplied: {set(missing)}")
    return merged
