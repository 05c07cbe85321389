"""Training: the trainer, RFN/SAM step, adversarial training, sharpness and checkpoints.

`mtl.train.zoo` (models trained or reused by config hash) is imported on its own.
"""
from __future__ import annotations

from mtl.train.adversarial import AdvTrainConfig, training_batches
from mtl.train.checkpoints import (CheckpointError, data_settings, list_checkpoints,
                                   load_checkpoint, read_meta, save_checkpoint, update_meta)
from mtl.train.config import TrainConfig
from mtl.train.sam import SAMStep
from mtl.train.sharpness import (SharpnessConfig, hessian_max_eigenvalue, hessian_trace,
                                 measure_sharpness, sam_sharpness)
from mtl.train.trainer import (NonFiniteLossError, TrainResult, load_train_state,
                               save_train_state, train)

__all__ = ["AdvTrainConfig", "CheckpointError", "NonFiniteLossError", "SAMStep",
           "SharpnessConfig", "TrainConfig", "TrainResult", "data_settings",
           "hessian_max_eigenvalue", "hessian_trace", "list_checkpoints", "load_checkpoint",
           "load_train_state", "measure_sharpness", "read_meta", "sam_sharpness",
           "save_checkpoint", "save_train_state", "train", "training_batches", "update_meta"]
