"""Recipe -> objects: its data (cache, loaders, augmentation) and its Learner (model, loss,
optimizer, techniques, metrics, run records). Each spec goes to the function that uses it,
field names unchanged (`Recipe.kwargs`)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import distributed
from .augment import AugmentSpec
from .callbacks import Callback
from .checkpoint import CheckpointSaver
from .data import DataLoaders, DataSpec, make_dataloaders
from .distributed import World
from .learner import Learner, StepSpec
from .losses import LossSpec, make_loss
from .metrics import MetricSpec, make_metrics
from .models import ModelSpec, create_model, layer_groups
from .optim import OptimizerSpec
from .recipe import Recipe
from .records import RunLogger
from .techniques import TechniqueSpec, technique_callbacks

def build_dataloaders(recipe: Recipe, world: World = World(), workers: int = 0, progress: bool = True) -> DataLoaders:
    """The recipe's data: cache, loaders, augmentation and normalization (this rank's shard).

    Under torchrun each machine's first process (LOCAL_RANK 0) builds (or finds) the presize cache
    in that machine's data home while the machine's other processes wait; the machines build at
    the same time, and the others then reuse their machine's cache. A data home the machines share
    is built once (`build_cache` locks it). `recipe.batch_size` is the global batch: each of the N
    processes takes batch_size // N. `workers`: processes decoding the cache (0 = all cores).
    `progress`: rank 0 prints the split and the cache's progress.
    """
    data = {**recipe.kwargs(DataSpec), "batch_size": max(recipe.batch_size // world.world_size, 1)}
    builds_cache = world.local_rank == 0
    if not builds_cache:  # one barrier for all: it opens once every machine's cache is there
        distributed.barrier()
    dls = make_dataloaders(**data, augment=recipe.kwargs(AugmentSpec), seed=recipe.seed, device=world.device,
                           rank=world.rank, world_size=world.world_size, workers=workers,
                           progress=progress and world.is_main)
    if builds_cache:
        distributed.barrier()
    return dls


def build_learner(recipe: Recipe, dls: DataLoaders, out: Path, checkpoint_every_min: float = 0.0,
                  extra_cbs: list[Callback] | None = None) -> Learner:
    """Model, loss, metrics and callbacks for the recipe, its checkpoints and records in `out`
    (plus any `extra_cbs` of the caller)."""
    torch.manual_seed(recipe.seed)  # same seed -> same initial weights
    model = create_model(**recipe.kwargs(ModelSpec), n_out=len(dls.vocab))
    metrics = make_metrics(**recipe.kwargs(MetricSpec), multi_label=dls.multi_label)
    cbs = technique_callbacks(**recipe.kwargs(TechniqueSpec), size_px=recipe.size_px, seed=recipe.seed)
    # The best checkpoint follows the table's first metric: accuracy, or accuracy_multi.
    cbs += [CheckpointSaver(out, metrics[0].__name__, checkpoint_every_min), RunLogger(out), *(extra_cbs or [])]
    loss = make_loss(**recipe.kwargs(LossSpec), multi_label=dls.multi_label)
    return Learner(dls, model, loss, metrics=metrics, cbs=cbs, **recipe.kwargs(OptimizerSpec),
                   **recipe.kwargs(StepSpec), splitter=layer_groups if recipe.fine_tunes else None)
