"""Name -> factory registries that configs choose from (no ``class_name`` reflection).

A modality plugs into training at import time of its ``multidiff/<modality>/registry.py``:

    register_model("audio_unet1d", factory, params=UNetParams, modality="audio",
                   example_shape=(1, 16384), example_batch=32)
    register_dataset("audio_digits", factory, params=DigitsParams, modality="audio", needs_path=True)
    register_modality(Modality("audio", preview=write_wav_previews, evaluate=audio_metrics, ...))

(the last from multidiff.train.modality, the one contract a modality fills in). :func:`load_plugins`
imports the toy modules, every ``multidiff/<name>/registry.py`` it finds, and any module named in
the comma-separated environment variable ``MULTIDIFF_PLUGINS``: a new modality needs no edit here.

Signatures (all shapes exclude nothing: ``sample_shape`` is one sample's shape, without batch):

* model factory ``factory(params, spec: DataSpec, *, gradient_checkpointing: bool) -> nn.Module``;
  the module follows ``model(x_in (batch, *sample_shape), noise_level (batch,), cond) -> (batch, *sample_shape)``,
  with ``cond`` None or a mapping (``{"label": LongTensor (batch,)}`` for class-conditional models, where
  the label ``spec.num_classes`` means "no label", for classifier-free guidance).
* data-set factory ``factory(params, path: str | None, seed: int) -> torch.utils.data.Dataset`` whose
  items are dicts ``{"x": Tensor sample_shape, "label": int (optional), ...}``; it must also have
  a ``spec`` attribute (a :class:`DataSpec`).
* data-set items may also hold ``loss_mask`` (a tensor broadcastable to x: 1 = counts in the loss, 0 = padding);
  the trainer passes it to the loss instead of the model.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data: one sample's shape, the class count
    (0 = unconditional) and the modality name that selects preview and metric hooks."""

    sample_shape: tuple[int, ...]
    num_classes: int = 0
    modality: str = "generic"
    #: modality facts previews and metrics need, JSON-serialisable (e.g. {"sample_rate": 16000})
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        return {"sample_shape": list(self.sample_shape), "num_classes": self.num_classes, "modality": self.modality,
                "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, d: dict) -> DataSpec:
        return cls(tuple(int(s) for s in d["sample_shape"]), int(d.get("num_classes", 0)), str(d.get("modality", "generic")),
                   dict(d.get("meta", {})))


@dataclass
class EmptyParams:
    """Parameters of an entry that takes none."""


@dataclass
class ModelEntry:
    factory: Callable[..., Any]
    params: type = EmptyParams
    modality: str = "generic"
    example_shape: tuple[int, ...] = (2,)   # one sample's shape for benchmarks
    example_batch: int = 256                # a batch size that suits the backbone in benchmarks
    example_num_classes: int = 0
    description: str = ""
    kind: str = "denoiser"  # or "autoencoder" (trained with objective.kind: autoencoder)


@dataclass
class DatasetEntry:
    factory: Callable[..., Any]
    params: type = EmptyParams
    modality: str = "generic"
    needs_path: bool = False
    description: str = ""


MODELS: dict[str, ModelEntry] = {}
DATASETS: dict[str, DatasetEntry] = {}

#: modules load_plugins imports besides every multidiff/<name>/registry.py (missing ones are skipped)
PLUGIN_MODULES: list[str] = [
    "multidiff.toy.model",
    "multidiff.toy.data",
    "multidiff.train.latents",
]


def modality_registries() -> list[str]:
    """``multidiff.<name>.registry`` for every sub-package of multidiff that has a registry.py."""
    import pkgutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return sorted(f"multidiff.{info.name}.registry" for info in pkgutil.iter_modules([str(root)])
                  if info.ispkg and (root / info.name / "registry.py").is_file())
_loaded: set[str] = set()
#: built-in plugin modules that failed to import (module -> error), reported by unknown-name errors
PLUGIN_ERRORS: dict[str, str] = {}


def _check_params(name: str, params: type) -> None:
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"{name}: params must be a dataclass type, got {params!r}")


def register_model(name: str, factory: Callable, *, params: type = EmptyParams, modality: str = "generic",
                   example_shape: tuple[int, ...] = (2,), example_batch: int = 256, example_num_classes: int = 0,
                   description: str = "", kind: str = "denoiser") -> None:
    """Make a backbone available to configs as ``model.name: <name>``; ``kind`` "autoencoder" for
    autoencoders of latent diffusion (trained with objective.kind: autoencoder)."""
    _check_params(name, params)
    if kind not in ("denoiser", "autoencoder"):
        raise ValueError(f"model kind must be 'denoiser' or 'autoencoder', got {kind!r}")
    MODELS[name] = ModelEntry(factory, params, modality, tuple(example_shape), example_batch, example_num_classes,
                              description, kind)


def register_dataset(name: str, factory: Callable, *, params: type = EmptyParams, modality: str = "generic",
                     needs_path: bool = False, description: str = "") -> None:
    """Make a data set available to configs as ``data.name: <name>``."""
    _check_params(name, params)
    DATASETS[name] = DatasetEntry(factory, params, modality, needs_path, description)


def load_plugins() -> None:
    """Import every plugin module once so its register_* calls run."""
    extra = [m.strip() for m in os.environ.get("MULTIDIFF_PLUGINS", "").split(",") if m.strip()]
    for module in PLUGIN_MODULES + modality_registries() + extra:
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                pass  # the plugin module does not exist (yet): nothing to register
            elif module in extra:
                raise
            else:
                # a built-in modality whose optional dependencies are missing here: its names stay
                # unregistered, and the unknown-name error reports why
                PLUGIN_ERRORS[module] = f"{type(e).__name__}: {e}"
        _loaded.add(module)


# ------------------------------------------------------------------- built-in: synthetic
@dataclass
class SyntheticParams:
    """Random tensors of a fixed shape: for throughput benchmarks of any backbone."""

    shape: list[int] = field(default_factory=lambda: [2])
    size: int = 65536
    num_classes: int = 0


class SyntheticDataset:
    """Items {"x": N(0, 0.5^2) tensor of ``shape``}, the same for a given index and seed."""

    def __init__(self, params: SyntheticParams, path: str | None, seed: int):
        import torch

        self.params, self.seed, self._torch = params, seed, torch
        self.spec = DataSpec(tuple(params.shape), params.num_classes, "generic")

    def __len__(self) -> int:
        return self.params.size

    def __getitem__(self, i: int) -> dict:
        torch = self._torch
        from ..core.utils import mix_seed

        g = torch.Generator().manual_seed(mix_seed(self.seed, int(i)))
        item = {"x": 0.5 * torch.randn(tuple(self.params.shape), generator=g)}
        if self.params.num_classes:
            item["label"] = int(i) % self.params.num_classes
        return item


register_dataset("synthetic", SyntheticDataset, params=SyntheticParams,
                 description="random N(0, 0.25) tensors of a given shape (benchmarks)")
