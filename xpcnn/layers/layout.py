"""One image's shape in the user's layout, (C, H, W) as PyTorch's, and in the layers', channels-last
(H, W, C); feature vectors (F,) are the same in both."""

from __future__ import annotations


def channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One image's shape as the user gives it, (C, H, W), as the layers see it, (H, W, C)."""
    return (*shape[1:], shape[0]) if len(shape) == 3 else tuple(shape)


def channels_first(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One image's shape as the layers see it, (H, W, C), as the user sees it, (C, H, W)."""
    return (shape[-1], *shape[:-1]) if len(shape) == 3 else tuple(shape)
