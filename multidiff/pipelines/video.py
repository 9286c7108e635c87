"""VideoDiffusionPipeline: clip generation with any registered video backbone (UNet3D, VideoTransformer)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..nn.modeling import SafetensorsModelMixin
from ..video.io import write_gif, write_mp4
from .base import MultidiffPipeline, MultidiffSchedulerConfig, output_paths


@dataclass
class VideoDiffusionOutput(BaseOutput):
    """videos: (batch, channels, frames, height, width) float32 in about [-1, 1] (torch, or numpy
    with output_type="np"); fps: frames per second; class_labels: per sample (None: unconditional)."""

    videos: torch.Tensor | np.ndarray
    fps: float = 8.0
    class_labels: list[int] | None = None

    def save(self, folder, prefix: str = "sample", format: str = "mp4", scale: int = 1) -> list[Path]:
        """One MP4 (H.264 through PyAV) or GIF per sample, <folder>/<prefix>-000.mp4 ...; ``scale``
        enlarges small frames by pixel repetition. Returns the paths."""
        writers = {"mp4": write_mp4, "gif": write_gif}
        if format not in writers:
            raise ValueError(f"format must be 'mp4' or 'gif', got {format!r}")
        paths = output_paths(folder, prefix, len(self.videos), format)
        return [writers[format](p, torch.as_tensor(v), self.fps, scale=scale) for p, v in zip(paths, self.videos)]


class VideoDiffusionPipeline(MultidiffPipeline):
    """Clips from a video backbone: samples of shape (batch, channels, frames, height, width).

    The component ``unet`` holds whichever video backbone the checkpoint was trained with
    (multidiff.video.unet3d.UNet3D, multidiff.video.transformer.VideoTransformer, or any model
    registered for the video modality that has ``total_factor``, the number height and width must divide by).
    ``num_frames`` / ``height`` / ``width`` (call keywords) override the stored shape; height and
    width must be multiples of the backbone's factor (a U-Net's patch_size * 2 ** (levels - 1), a
    transformer's patch_size). A backbone
    trained for frame prediction / interpolation generates from scratch here (no given frames).
    """

    modality = "video"
    backbone_name = "unet"
    backbone_class = SafetensorsModelMixin
    shape_arguments = ("num_frames", "height", "width")

    def __init__(self, unet: SafetensorsModelMixin, scheduler: MultidiffSchedulerConfig, text_encoder=None, vae=None):
        super().__init__()
        self._register(unet, scheduler, text_encoder, vae)

    def sample_shape(self, num_frames: int | None = None, height: int | None = None,
                     width: int | None = None) -> tuple[int, int, int, int]:
        channels, *stored = self._stored_shape(4, 0)
        frames, h, w = (int(v) if v is not None else s for v, s in zip((num_frames, height, width), stored))
        factor = self.unet.total_factor
        if frames < 1 or min(h, w) < factor or h % factor or w % factor:
            raise ValueError(f"need num_frames >= 1 and height, width positive multiples of the backbone's factor "
                             f"{factor}, got {frames} frames of {h}x{w}")
        return channels, frames, h, w

    def _output(self, samples, class_labels) -> VideoDiffusionOutput:
        return VideoDiffusionOutput(samples, float(self.scheduler.config.fps or 8.0), class_labels)
