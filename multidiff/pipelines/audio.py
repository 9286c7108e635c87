"""AudioDiffusionPipeline: waveform generation with a multidiff.audio.unet1d.UNet1D."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..audio.io import save_wav
from ..audio.unet1d import UNet1D
from .base import MultidiffPipeline, MultidiffSchedulerConfig, output_paths


@dataclass
class AudioDiffusionOutput(BaseOutput):
    """audios: (batch, channels, length) float32 waveforms in about [-1, 1] (torch, or numpy with
    output_type="np"); sample_rate in Hz; class_labels: the label of each sample (None: unconditional)."""

    audios: torch.Tensor | np.ndarray
    sample_rate: int = 16000
    class_labels: list[int] | None = None

    def save(self, folder, prefix: str = "sample") -> list[Path]:
        """One 16-bit PCM WAV per sample, <folder>/<prefix>-000.wav ...; returns the paths."""
        paths = output_paths(folder, prefix, len(self.audios), "wav")
        return [save_wav(p, torch.as_tensor(a), self.sample_rate) for p, a in zip(paths, self.audios)]


class AudioDiffusionPipeline(MultidiffPipeline):
    """Waveforms from a UNet1D: samples of shape (batch, channels, length).

    ``length`` (call keyword) overrides the stored length; it must be a multiple of the U-Net's
    total down-sampling factor (patch_size * prod(factors)).
    """

    modality = "audio"
    backbone_name = "unet"
    backbone_class = UNet1D
    shape_arguments = ("length",)

    def __init__(self, unet: UNet1D, scheduler: MultidiffSchedulerConfig, text_encoder=None, vae=None):
        super().__init__()
        self._register(unet, scheduler, text_encoder, vae)

    def sample_shape(self, length: int | None = None) -> tuple[int, int]:
        channels, stored = self._stored_shape(2, 0)
        length = stored if length is None else int(length)
        factor = self.unet.total_factor
        if length < factor or length % factor:
            raise ValueError(f"length must be a positive multiple of the U-Net's down-sampling factor {factor}, "
                             f"got {length}")
        return channels, length

    def _output(self, samples, class_labels) -> AudioDiffusionOutput:
        return AudioDiffusionOutput(samples, int(self.scheduler.config.sample_rate or 16000), class_labels)
