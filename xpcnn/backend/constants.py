"""Constants made once on the device (class indices, window offsets, a zero to fill with), so
that a step never copies them from the host."""

from __future__ import annotations

import math
from typing import Any

from xpcnn.backend import device_name

_CONSTANTS: dict[tuple, Any] = {}


def constant(
    xp: Any, shape: tuple[int, ...], dtype: Any, where: Any, fill: float | None = None
) -> Any:
    """0, 1, 2, … in `shape` (window offsets, pixel positions, classes), or `fill` everywhere,
    of `dtype` on device `where`: made there once per (shape, dtype, device, fill), never per
    call, so that a step copies nothing from the host."""
    key = (xp, shape, dtype, device_name(where), fill)
    if key not in _CONSTANTS:
        if fill is None:
            values = xp.arange(math.prod(shape), dtype=dtype, device=where)
            _CONSTANTS[key] = xp.reshape(values, shape)
        else:
            _CONSTANTS[key] = xp.full(shape, fill, dtype=dtype, device=where)
    return _CONSTANTS[key]
