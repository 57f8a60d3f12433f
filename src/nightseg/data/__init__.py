"""Datasets for night-time segmentation, joint transforms and batched photometric augmentation.

``build_dataset(name, root, split, **kw)`` builds any dataset by name (see ``DATASET_NAMES``); every
dataset validates its root at construction and returns samples following the data contract
(`nightseg.data.common`). `nightseg.data.streams` turns a recipe's streams into the step-indexed
training data of the engine.
"""

from __future__ import annotations

from nightseg.data.acdc import ACDC
from nightseg.data.bdd100k import BDD100K
from nightseg.data.cityscapes import Cityscapes
from nightseg.data.common import LABEL_IDS, TRAIN_IDS, LabelMap, Listing, Record, SegmentationDataset
from nightseg.data.dark_zurich import DarkZurich, DarkZurichPairs
from nightseg.data.folder import FolderDataset
from nightseg.data.nightcity import NightCity, NightCityPlus
from nightseg.data.nighttime_driving import NighttimeDriving
from nightseg.data.photometric import StrongConfig, WeakConfig, strong_augment, weak_augment
from nightseg.data.registry import DATASET_NAMES, DATASETS, build_dataset, dataset_class
from nightseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomScaleCrop,
    Resize,
    denormalize_imagenet,
    normalize_imagenet,
    train_transform,
)

__all__ = [
    "ACDC",
    "BDD100K",
    "DATASETS",
    "DATASET_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_IDS",
    "TRAIN_IDS",
    "Cityscapes",
    "DarkZurich",
    "DarkZurichPairs",
    "FolderDataset",
    "LabelMap",
    "Listing",
    "NightCity",
    "NightCityPlus",
    "NighttimeDriving",
    "RandomScaleCrop",
    "Record",
    "Resize",
    "SegmentationDataset",
    "StrongConfig",
    "WeakConfig",
    "build_dataset",
    "dataset_class",
    "denormalize_imagenet",
    "normalize_imagenet",
    "strong_augment",
    "train_transform",
    "weak_augment",
]
