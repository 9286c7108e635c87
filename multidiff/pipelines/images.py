"""ImageDiffusionPipeline: images with a multidiff.images.unet2d.UNet2D."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..images.unet2d import UNet2D
from .base import MultidiffPipeline, MultidiffSchedulerConfig, output_paths


@dataclass
class ImageDiffusionOutput(BaseOutput):
    """images: (batch, channels, height, width) float32 in about [-1, 1] (torch, or numpy with
    output_type="np"); class_labels: per sample (None: unconditional)."""

    images: torch.Tensor | np.ndarray
    class_labels: list[int] | None = None

    def save(self, folder, prefix: str = "sample", scale: int = 1) -> list[Path]:
        """One PNG per sample, <folder>/<prefix>-000.png ...; ``scale`` enlarges by pixel repetition."""
        from PIL import Image

        paths = output_paths(folder, prefix, len(self.images), "png")
        for path, img in zip(paths, self.images):
            x = ((torch.as_tensor(img).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            array = x.permute(1, 2, 0).numpy()
            image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            if scale > 1:
                image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            image.save(path)
        return paths


class ImageDiffusionPipeline(MultidiffPipeline):
    """Images from a UNet2D: samples of shape (batch, channels, height, width); ``height`` / ``width``
    (call keywords) override the stored size (multiples of the U-Net's factor)."""

    modality = "images"
    backbone_name = "unet"
    backbone_class = UNet2D
    shape_arguments = ("height", "width")

    def __init__(self, unet: UNet2D, scheduler: MultidiffSchedulerConfig, text_encoder=None, vae=None):
        super().__init__()
        self._register(unet, scheduler, text_encoder, vae)

    def sample_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        channels, *stored = self._stored_shape(3, 0)
        h, w = (int(v) if v is not None else s for v, s in zip((height, width), stored))
        factor = self.unet.total_factor
        if min(h, w) < factor or h % factor or w % factor:
            raise ValueError(f"height and width must be positive multiples of the U-Net's factor {factor}, got {h}x{w}")
        return channels, h, w

    def _output(self, samples, class_labels) -> ImageDiffusionOutput:
        return ImageDiffusionOutput(samples, class_labels)
