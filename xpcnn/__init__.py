"""xpcnn: convolutional networks from scratch on the Python array API (NumPy or CuPy).

`import xpcnn` gives the library: `xpcnn.layers`, `xpcnn.losses`, `xpcnn.optim`, `xpcnn.data`,
`xpcnn.models`, `xpcnn.train` (and `xpcnn.manual_seed`). The run layer (`xpcnn.runs`,
`xpcnn.callbacks`), plots, benchmarks and the command line load when imported.
"""

__version__ = "0.1.0"

from xpcnn import data, layers, losses, models, optim, train  # noqa: E402
from xpcnn.backend import manual_seed  # noqa: E402

__all__ = ["__version__", "data", "layers", "losses", "manual_seed", "models", "optim", "train"]
