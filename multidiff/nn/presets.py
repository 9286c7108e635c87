"""Backbone presets as config sections, for every backbone alike.

A backbone file keeps one-line presets (``PRESETS = {"small": unet_small, ...}``, each a function
of keyword overrides). :func:`preset_params` turns the backbone's constructor into the dataclass
that ``model.params`` is checked against: ``preset`` plus every constructor argument but the ones
the data decide (input channels, classes), each ``None`` = the preset's value. :func:`build_preset`
builds a model from such params.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from typing import Any, Union

from torch import nn

#: constructor arguments the data decide, never set in model.params
FROM_DATA = ("in_channels", "num_classes")


def _config_type(tp: Any) -> Any:
    """A constructor annotation as a config field type: sequences become lists (YAML has no tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_config_type(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin in (collections.abc.Sequence, list, tuple):
        item = args[0] if args and args[0] is not Ellipsis else Any
        return list[_config_type(item)]
    return tp


def preset_params(name: str, model_cls: type, presets: dict, *, default: str, doc: str = "",
                  exclude: tuple[str, ...] = FROM_DATA) -> type:
    """The ``model.params`` dataclass of a backbone: ``preset`` (default ``default``, one of ``presets``)
    and each argument of ``model_cls.__init__`` but ``exclude``, typed as annotated, default None."""
    if default not in presets:
        raise ValueError(f"{name}: default preset {default!r} is not one of {sorted(presets)}")
    init = inspect.unwrap(model_cls.__init__)  # diffusers' register_to_config wraps it
    hints = typing.get_type_hints(init)
    fields: list[tuple[str, Any, Any]] = [("preset", str, dataclasses.field(default=default))]
    for arg in list(inspect.signature(init).parameters)[1:]:
        if arg in exclude or arg not in hints:
            continue
        fields.append((arg, typing.Optional[_config_type(hints[arg])], dataclasses.field(default=None)))  # noqa: UP045
    cls = dataclasses.make_dataclass(name, fields)
    cls.__doc__ = (doc or f"A preset of {model_cls.__name__} ({', '.join(sorted(presets))}) and overrides of its "
                          f"arguments (None: the preset's value).")
    cls.presets = presets
    return cls


def build_preset(params: Any, *, gradient_checkpointing: bool = False, **from_data) -> nn.Module:
    """The model of ``params.preset`` with every non-None field of ``params`` as an override, plus the
    arguments the data decide (``from_data``: in_channels, num_classes ...; a field set in ``params``
    wins over a data default passed as ``defaults``)."""
    presets = type(params).presets
    if params.preset not in presets:
        raise ValueError(f"model.params.preset: unknown preset {params.preset!r}; known: {sorted(presets)}")
    overrides = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)
                 if f.name != "preset" and getattr(params, f.name) is not None}
    defaults = from_data.pop("defaults", {})
    model = presets[params.preset](**from_data, **{**defaults, **overrides})
    model.gradient_checkpointing = gradient_checkpointing
    return model
