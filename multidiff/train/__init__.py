"""Training: accelerate-based trainer, checkpoints, EMA, typed configs and registries.

Light to import: the registries and config are loaded here; the trainer (which imports
accelerate) is imported on first use of ``Trainer`` / ``FitResult``.
"""
from .config import Config, ConfigError, load_config
from .modality import MODALITIES, Modality, get_modality, register_modality
from .registry import DATASETS, MODELS, DataSpec, register_dataset, register_model

__all__ = ["Config", "ConfigError", "load_config", "DATASETS", "MODELS", "MODALITIES", "DataSpec", "Modality",
           "get_modality", "register_dataset", "register_model", "register_modality", "Trainer", "FitResult"]


def __getattr__(name):
    if name in ("Trainer", "FitResult", "NonFiniteLossError"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
