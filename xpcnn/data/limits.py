"""Budgets for what input may make xpcnn allocate: bytes of one file, pixels of one image,
decoded bytes of a whole dataset — checked before allocating, raised through XPCNN_MAX_* ."""

from __future__ import annotations

import os
from dataclasses import dataclass

from xpcnn.data.dataset import DataError

MB, GB = 2**20, 2**30


@dataclass(frozen=True)
class Limits:
    """The defaults fit CIFAR-scale sets and ImageNet-scale images on a laptop; each can be
    raised (or lowered) with its environment variable."""

    file_mb: float = 256.0  # one file or archive member, as stored (XPCNN_MAX_FILE_MB)
    image_mp: float = 64.0  # one image, decoded or resized to, in megapixels (XPCNN_MAX_IMAGE_MP)
    data_gb: float = 8.0  # all images of a dataset, decoded, in GiB (XPCNN_MAX_DATA_GB)

    @classmethod
    def from_env(cls) -> Limits:
        values = {}
        for field, variable in VARIABLES.items():
            text = os.environ.get(variable, "").strip()
            if not text:
                continue
            try:
                values[field] = float(text)
            except ValueError:
                values[field] = -1.0
            if not values[field] > 0:
                raise DataError(f"{variable}={text!r}: expected a positive number")
        return cls(**values)

    def check_file(self, size: int, name: str) -> None:
        if size > self.file_mb * MB:
            raise DataError(
                f"{name}: {size / MB:.0f} MB is more than the {self.file_mb:g} MB allowed for "
                f"one file (set {VARIABLES['file_mb']} to allow it)"
            )

    def image_problem(self, height: int, width: int) -> str | None:
        """Why an image of this size is refused, or None."""
        if height * width <= self.image_mp * 1e6:
            return None
        return (
            f"a {height}x{width} image is more than the {self.image_mp:g} megapixels allowed "
            f"for one image (set {VARIABLES['image_mp']} to allow it)"
        )

    def check_image(self, height: int, width: int, name: str) -> None:
        problem = self.image_problem(height, width)
        if problem is not None:
            raise DataError(f"{name}: {problem}")

    def check_data(self, nbytes: int, name: str) -> None:
        if nbytes > self.data_gb * GB:
            raise DataError(
                f"{name}: its images need {nbytes / GB:.1f} GiB decoded, more than the "
                f"{self.data_gb:g} GiB allowed (set {VARIABLES['data_gb']} to allow it)"
            )


VARIABLES = {
    "file_mb": "XPCNN_MAX_FILE_MB",
    "image_mp": "XPCNN_MAX_IMAGE_MP",
    "data_gb": "XPCNN_MAX_DATA_GB",
}
