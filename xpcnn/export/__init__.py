"""Export to ONNX: a model, or a run's checkpoint, as a graph from uint8 images to class
probabilities that ONNX Runtime (or any ONNX reader) serves without xpcnn.

    to_onnx(model, path, mean=..., std=..., classes=..., input_shape=(C, H, W))
    export_checkpoint(checkpoint_path, path)      the model, statistics and classes of a run

Needs the `onnx` package (`pip install 'xpcnn[onnx]'`), imported only when a graph is built.
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

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportError",
    "describe",
    "export_checkpoint",
    "onnx_model",
    "to_onnx",
]
