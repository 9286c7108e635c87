"""The modality contract: everything a modality gives the trainer, in one record.

A modality is a folder ``multidiff/<name>/`` whose ``registry.py`` registers its backbones and data
sets (:func:`multidiff.train.registry.register_model`, ``register_dataset``) and one
:class:`Modality` under the name its data sets put in ``DataSpec.modality``::

    register_modality(Modality(
        name="audio",
        preview=audio_preview,                  # samples -> files to look at or listen to
        evaluate=audio_evaluate,                # samples -> metrics (multidiff eval)
        reconstruction_metrics=audio_recon,     # autoencoders: (reconstruction, x) -> extra metrics
        autoencoder_params=AudioAEParams,       # objective.autoencoder.modality_params, checked
        autoencoder_loss=multires_stft_term,    # (params) -> extra loss term or None
        discriminator=stft_discriminator,       # (params, spec) -> nn.Module for adversarial training
        deterministic_data={"split": None, "random_crop": False},   # data.params for latent caching
        file_extensions=(".wav", ".flac", ...),  # what `multidiff pack` collects from a folder
        probe=probe_length,                     # packing: file -> {"duration", "rate"} (DataError: skip it)
        decode_options={"vocoder": "help ..."},  # `multidiff sample / eval --vocoder X`: spec.meta["vocoder"]
        check_decode=check_vocoder,             # (spec) -> None, raises InputError before any sampling
    ))

``multidiff.train`` calls these hooks by ``spec.modality`` and never names a modality; a new
modality needs no edit of ``multidiff/train`` or ``multidiff/core`` (``load_plugins`` finds
``multidiff/<name>/registry.py`` by itself). docs/modalities.md walks through one.

Signatures (``samples``: (n, *sample_shape) float32 on the CPU):

* ``preview(samples, out_dir: Path, name: str, *, labels=None, spec=None) -> list[Path]``
* ``evaluate(samples, config, *, labels=None, spec=None) -> dict[str, float]``
* ``reconstruction_metrics(reconstruction, x) -> dict[str, float]`` (both (n, *sample_shape))
* ``autoencoder_loss(params) -> callable(reconstruction, x, mask) -> (n,)`` or None
* ``discriminator(params, spec) -> nn.Module`` whose ``forward(x) -> (logits, features)`` (lists
  per scale), for ``objective.autoencoder.adversarial_weight`` > 0
* ``deterministic_data``: ``data.params`` values that make a data set give every item once, as
  it is (no split filter, crop or augmentation), for ``multidiff encode``; keys a data set lacks
  are skipped.
* ``file_extensions``: lower-case suffixes (with the dot) of this modality's files, for ``multidiff pack``.
* ``probe(path) -> dict``: read once per file while packing; its ``duration`` (s) and ``rate``
  (frames/s) go into the shard index (a video data set then needs no probe at start-up); a
  DataError skips the file (listed in the shard header).
* ``decode_options``: option name -> help. ``multidiff sample`` and ``eval`` take ``--<name> VALUE``
  and put it in ``spec.meta[name]`` before the preview and evaluate hooks run (how samples become
  a signal, e.g. which vocoder turns a log-mel into audio); a model of another modality refuses it.
* ``check_decode(spec)``: called then, before sampling, so a decoder that cannot work is an
  InputError (one line, exit 2) rather than minutes of sampling lost.

Data sets of a modality may expose ``rows``: one dict per item with its ``split`` and ``text``
(caption), which ``multidiff encode`` keeps beside the latents.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Modality:
    """The hooks of one modality (see the module docstring); every hook is optional."""

    name: str
    preview: Callable[..., list] | None = None
    evaluate: Callable[..., dict] | None = None
    reconstruction_metrics: Callable[..., dict] | None = None
    autoencoder_params: type | None = None
    autoencoder_loss: Callable[[Any], Callable | None] | None = None
    discriminator: Callable[..., Any] | None = None
    deterministic_data: Mapping[str, Any] = field(default_factory=dict)
    file_extensions: tuple[str, ...] = ()
    probe: Callable[[Any], dict] | None = None
    decode_options: Mapping[str, str] = field(default_factory=dict)
    check_decode: Callable[[Any], None] | None = None
    description: str = ""


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Make a modality's hooks available under ``modality.name`` (the name its DataSpecs carry)."""
    if not isinstance(modality, Modality):
        raise TypeError(f"register_modality takes a Modality, got {type(modality).__name__}")
    MODALITIES[modality.name] = modality
    return modality


def get_modality(name: str) -> Modality:
    """The registered modality ``name``, or an empty record (no hooks) for one that registered none."""
    from .registry import load_plugins

    load_plugins()
    return MODALITIES.get(name) or Modality(name)
