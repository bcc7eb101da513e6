"""The fastai book's names on vivace: `from vivace.book import *` for `from fastai.vision.all import *`.

A thin layer: each name gathers the book's arguments and hands them to vivace's own data
pipeline, loop and techniques. docs/book.md lists every name and each difference from fastai.
"""
from pathlib import Path

from vivace.normalize import imagenet_stats
from vivace.losses import LabelSmoothingCrossEntropy
from vivace.metrics import accuracy, error_rate
from vivace.techniques import CutMix, Mixup
from vivace.models import xresnet18, xresnet34, xresnet50, xresnet101, xresnet152

from .data import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, MultiCategoryBlock, RandomSplitter,
                   URLs, get_image_files, get_image_files_sorted, parent_label, untar_data)
from .inference import load_learner
from .interpret import ClassificationInterpretation
from .learner import CrossEntropyLossFlat, Learner, MixUp, SuggestedLRs, cnn_learner, vision_learner
from .tables import ColReader, ColSplitter, ImageDataLoaders
from .transforms import Normalize, Resize, aug_transforms
from .vision import PILImage, plt, show_image, tensor

__all__ = [
    # data
    "Path", "URLs", "untar_data", "get_image_files", "get_image_files_sorted", "parent_label",
    "RandomSplitter", "GrandparentSplitter", "DataBlock", "ImageBlock", "CategoryBlock",
    "MultiCategoryBlock", "ColReader", "ColSplitter", "ImageDataLoaders",
    "Resize", "aug_transforms", "Normalize", "imagenet_stats",
    # models
    "xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152",
    # training
    "Learner", "vision_learner", "cnn_learner", "CrossEntropyLossFlat", "LabelSmoothingCrossEntropy", "Mixup", "MixUp", "CutMix",
    "accuracy", "error_rate", "SuggestedLRs",
    # inference and interpretation
    "load_learner", "ClassificationInterpretation",
    # the Mixup figure
    "PILImage", "tensor", "show_image", "plt",
]
