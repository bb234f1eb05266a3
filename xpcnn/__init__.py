"""xpcnn: convolutional networks from scratch on the Python array API (NumPy or CuPy)."""

from xpcnn.backend import manual_seed

__version__ = "0.1.0"
__all__ = ["manual_seed", "__version__"]
