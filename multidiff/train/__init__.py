"""Training: accelerate-based trainer, checkpoints, EMA, typed configs and registries.

Light to import: the registries and config are loaded here; the trainer (which imports
accelerate) is imported on first use of ``Trainer`` / ``FitResult``.
"""
from .config import Config, ConfigError, load_config
from .registry import (
    DATASETS,
    EVALUATORS,
    MODELS,
    PREVIEWS,
    DataSpec,
    register_dataset,
    register_evaluator,
    register_model,
    register_preview,
)

__all__ = ["Config", "ConfigError", "load_config", "DATASETS", "EVALUATORS", "MODELS", "PREVIEWS", "DataSpec",
           "register_dataset", "register_evaluator", "register_model", "register_preview", "Trainer", "FitResult"]


def __getattr__(name):
    if name in ("Trainer", "FitResult", "NonFiniteLossError"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
