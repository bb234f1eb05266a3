"""Export to ONNX: a model, or a run's checkpoint, as a graph from uint8 images to class
probabilities that ONNX Runtime (or any ONNX reader) serves without xpcnn; and to safetensors:
the state dict with PyTorch's keys and layouts, for PyTorch (the twin) and back.

    to_onnx(model, path, mean=..., std=..., classes=..., input_shape=(C, H, W))
    export_checkpoint(checkpoint_path, path)      the model, statistics and classes of a run
    to_safetensors(model, path, preset=..., ...), export_safetensors(checkpoint_path, path)
    load_weights(path)                            a .safetensors file's state dict and metadata
    read_safetensors(path)                        any .safetensors file's tensors and metadata

Needs the `onnx` package (`pip install 'xpcnn[onnx]'`), imported only when a graph is built, or
`safetensors` (`pip install 'xpcnn[safetensors]'`), imported when a file is written or read.
"""

from xpcnn.export.onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportError,
    describe,
    export_checkpoint,
    onnx_model,
    to_onnx,
)
from xpcnn.export.weights import (
    Weights,
    export_safetensors,
    load_weights,
    read_safetensors,
    to_safetensors,
)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportError",
    "Weights",
    "describe",
    "export_checkpoint",
    "export_safetensors",
    "load_weights",
    "onnx_model",
    "read_safetensors",
    "to_onnx",
    "to_safetensors",
]
