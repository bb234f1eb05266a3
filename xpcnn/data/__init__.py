"""The data pipeline: source → host dataset → batches on the device.

load_dataset            "cifar10", "cifar100", "mnist", "fashion-mnist", their files, image folders
stratified_split        deterministic stratified train/validation indices (and subsets)
channel_stats           per-channel mean and std for normalisation
random_crop, horizontal_flip, cutout, Augment     augmentation on the device, per batch
Batches                 shuffled, normalised, augmented batches of a dataset on the device
"""

from xpcnn.data.augment import Augment, cutout, horizontal_flip, random_crop
from xpcnn.data.batches import Batches
from xpcnn.data.cifar10 import CIFAR10_CLASSES
from xpcnn.data.dataset import DataError, Dataset, data_home
from xpcnn.data.sources import is_cifar10_name, is_dataset_name, load_dataset
from xpcnn.data.splits import (
    channel_stats,
    stratified_split,
    stratified_subset,
    train_val_indices,
)

__all__ = [
    "CIFAR10_CLASSES",
    "Augment",
    "Batches",
    "DataError",
    "Dataset",
    "channel_stats",
    "cutout",
    "data_home",
    "horizontal_flip",
    "is_cifar10_name",
    "is_dataset_name",
    "load_dataset",
    "random_crop",
    "stratified_split",
    "stratified_subset",
    "train_val_indices",
]
