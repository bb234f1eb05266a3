"""Layers with hand-written forward and backward passes.

Spatial layers work channels-last, (N, H, W, C); `Sequential` takes and returns PyTorch's
(N, C, H, W) at its boundary.
"""

from xpcnn.layers.activations import GELU, Dropout, ReLU, Scale
from xpcnn.layers.base import Layer, Sequential
from xpcnn.layers.conv import Conv2D
from xpcnn.layers.dense import Dense
from xpcnn.layers.init import identity_init, whitening_init
from xpcnn.layers.normalization import BatchNorm1D, BatchNorm2D
from xpcnn.layers.pooling import AvgPool2D, GlobalAvgPool2D, GlobalMaxPool2D, MaxPool2D
from xpcnn.layers.reshape import Flatten
from xpcnn.layers.residual import Residual
from xpcnn.layers.summary import Summary, SummaryRow

__all__ = [
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GELU",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "Layer",
    "MaxPool2D",
    "ReLU",
    "Residual",
    "Scale",
    "Sequential",
    "Summary",
    "SummaryRow",
    "identity_init",
    "whitening_init",
]
