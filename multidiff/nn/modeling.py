"""The diffusers model base our backbones, autoencoders and text encoders share."""
from __future__ import annotations

from diffusers.models.modeling_utils import ModelMixin


class SafetensorsModelMixin(ModelMixin):
    """diffusers' ModelMixin that loads safetensors only: ``from_pretrained`` never falls back to a
    pickled ``.bin`` (a crafted one could run code), whether called directly or by a pipeline loader."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if kwargs.get("use_safetensors") is False:
            raise ValueError(f"{cls.__name__} loads safetensors only (use_safetensors=False would unpickle .bin files)")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
