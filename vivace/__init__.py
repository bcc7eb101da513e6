"""vivace: train state-of-the-art image classifiers from scratch, fast."""
from .augment import TrainAugment
from .normalize import Normalize, compute_stats, imagenet_stats
from .callbacks import Callback
from .guards import EarlyStopping, StopAfter
from .techniques import EMA, CutMix, Mixup, MixupOrCutMix, ProgressiveResize
from .checkpoint import CheckpointSaver, load_checkpoint, save_checkpoint
from .data import DataLoaders, make_dataloaders, make_source
from .deploy import export_model
from .export import export_learner, load
from .learner import Learner
from .losses import CrossEntropy, LabelSmoothingCrossEntropy
from .metrics import accuracy, calibration_error, error_rate, nll, top_k_accuracy
from .mixing import cutmix, mixup
from .models import MODELS, create_model, xresnet18, xresnet34, xresnet50, xresnet101, xresnet152
from .recipe import PRESETS, Recipe, TrainOptions, make_recipe
from .schedule import SizeSchedule, flat_cos, one_cycle
from .tracking import TensorBoardCallback
from .train import train
from .views import ValidResize

__version__ = "0.1.0"

__all__ = [
    "Normalize", "TrainAugment", "ValidResize", "compute_stats", "imagenet_stats",
    "EMA", "Callback", "EarlyStopping", "ProgressiveResize", "StopAfter", "TensorBoardCallback",
    "CheckpointSaver", "load_checkpoint", "save_checkpoint",
    "DataLoaders", "make_dataloaders", "make_source",
    "export_learner", "export_model", "load",
    "Learner",
    "CrossEntropy", "LabelSmoothingCrossEntropy",
    "accuracy", "calibration_error", "error_rate", "nll", "top_k_accuracy",
    "CutMix", "Mixup", "MixupOrCutMix", "cutmix", "mixup",
    "MODELS", "create_model", "xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152",
    "PRESETS", "Recipe", "TrainOptions", "make_recipe",
    "SizeSchedule", "flat_cos", "one_cycle",
    "train",
]
