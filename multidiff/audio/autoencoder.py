"""Audio autoencoders for latent diffusion: diffusers' AutoencoderOobleck (the Stable Audio VAE,
Evans et al. 2024), in size presets, registered as ``audio_oobleck`` for ``objective.kind:
autoencoder``.

(batch, channels, samples) <-> latents (batch, latent_channels, samples / hop): the encoder's
last convolution gives ``encoder_hidden_size`` channels, a mean and a scale per latent channel,
so latent_channels = encoder_hidden_size / 2 and the decoder takes that many. Compression ratio
(samples x channels per latent value) = hop x channels / latent_channels.

What audio adds to the trainer's autoencoder loss (the modality hooks, multidiff.train.modality):
a multi-resolution STFT term (:func:`stft_term`, ``objective.autoencoder.modality_params``:
:class:`AudioAutoencoderParams`) and, for adversarial training, a multi-scale complex-STFT
discriminator (:class:`STFTDiscriminator`, as in EnCodec, Defossez et al. 2022, Sec. 3.4).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

OOBLECK_PRESETS = {
    # name: (encoder_hidden_size, downsampling_ratios, channel_multiples, decoder_channels)
    "tiny": (16, (2, 4, 4, 8), (1, 2, 2, 4), 16),     # hop 256, 8 latent channels: tests
    "light": (16, (4, 4, 4, 2), (1, 2, 4, 8), 16),    # hop 128, 8 latent channels: about 8x small's CPU rate
    "small": (32, (2, 4, 4, 4), (1, 2, 4, 8), 32),    # hop 128, 16 latent channels
    "base": (64, (2, 4, 4, 8), (1, 2, 4, 8), 64),     # hop 256, 32 latent channels
    "stable_audio": (128, (2, 4, 4, 8, 8), (1, 2, 4, 8, 16), 128),  # Stable Audio Open's layout, hop 2048
}


def build_oobleck(preset: str = "small", audio_channels: int = 1, sample_rate: int = 16000, **overrides):
    """An AutoencoderOobleck of a preset; ``overrides`` replace its fields (diffusers' names)."""
    from diffusers import AutoencoderOobleck

    if preset not in OOBLECK_PRESETS:
        raise ValueError(f"unknown Oobleck preset {preset!r}; known: {sorted(OOBLECK_PRESETS)}")
    hidden, ratios, multiples, decoder = OOBLECK_PRESETS[preset]
    kw = {"encoder_hidden_size": hidden, "downsampling_ratios": list(ratios), "channel_multiples": list(multiples),
          "decoder_channels": decoder, **overrides}
    kw.setdefault("decoder_input_channels", kw["encoder_hidden_size"] // 2)
    if kw["decoder_input_channels"] * 2 != kw["encoder_hidden_size"]:
        raise ValueError(f"decoder_input_channels ({kw['decoder_input_channels']}) must be encoder_hidden_size / 2 "
                         f"({kw['encoder_hidden_size']} / 2): the encoder gives a mean and a scale per latent channel")
    with warnings.catch_warnings():  # diffusers' Oobleck uses the deprecated torch weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        return AutoencoderOobleck(audio_channels=audio_channels, sampling_rate=sample_rate, **kw)


def hop_length(model) -> int:
    return int(math.prod(model.config.downsampling_ratios))


def compression_ratio(model) -> float:
    """Input values per latent value: hop x audio channels / latent channels."""
    return hop_length(model) * model.config.audio_channels / model.config.decoder_input_channels


@dataclass
class OobleckParams:
    """A preset of multidiff.audio.autoencoder (tiny / light / small / base / stable_audio) and overrides."""

    preset: str = "small"
    encoder_hidden_size: int | None = None
    downsampling_ratios: list[int] | None = None
    channel_multiples: list[int] | None = None
    decoder_channels: int | None = None


def build_oobleck_entry(params: OobleckParams, spec, *, gradient_checkpointing: bool = False):
    overrides = {k: v for k, v in vars(params).items() if k != "preset" and v is not None}
    model = build_oobleck(params.preset, audio_channels=spec.sample_shape[0],
                          sample_rate=int(spec.meta.get("sample_rate", 16000)), **overrides)
    hop = hop_length(model)
    if spec.sample_shape[-1] % hop:
        raise ValueError(f"data.params.length ({spec.sample_shape[-1]}) must be a multiple of the autoencoder's "
                         f"total down-sampling {hop} (model.params.downsampling_ratios)")
    return model


# ------------------------------------------------------------------- the trainer's audio hooks
@dataclass
class AudioAutoencoderParams:
    """``objective.autoencoder.modality_params`` for audio: the multi-resolution STFT term's weight and
    FFT sizes, and the adversarial discriminator's FFT sizes and width."""

    stft_weight: float = 1.0
    stft_sizes: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    discriminator_sizes: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    discriminator_channels: int = 32


def stft_term(params: AudioAutoencoderParams):
    """The autoencoder loss's audio term: ``stft_weight`` x multi-resolution STFT distance of the
    masked signals (silence floored at -60 dBFS); None when the weight is 0."""
    from .metrics import multires_stft_distance

    if not params.stft_weight:
        return None
    sizes = tuple(params.stft_sizes)

    def term(recon: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = 1.0 if mask is None else mask.to(recon.dtype)
        return params.stft_weight * multires_stft_distance(recon * m, x0 * m, sizes, eps=1e-5, silence_rms=1e-3)

    return term


def stft_discriminator(params: AudioAutoencoderParams, spec) -> STFTDiscriminator:
    """The adversarial discriminator of an audio autoencoder of (channels, samples) data."""
    if len(spec.sample_shape) != 2:
        raise ValueError(f"the STFT discriminator needs (channels, samples) audio, got {tuple(spec.sample_shape)}")
    return STFTDiscriminator(spec.sample_shape[0], params.discriminator_sizes, params.discriminator_channels)


class STFTDiscriminator(nn.Module):
    """Multi-scale complex-STFT discriminator (EnCodec, Defossez et al. 2022, Sec. 3.4): per FFT
    size, the real and imaginary STFT of each audio channel -> 2D convolutions strided along
    frequency -> a map of logits. forward(x (batch, channels, samples)) -> (logits, features):
    one (batch, frames', bins') logit map and a list of feature maps per scale."""

    def __init__(self, audio_channels: int = 1, fft_sizes: Sequence[int] = (512, 1024, 2048), channels: int = 32,
                 layers: int = 3):
        super().__init__()
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        self.scales = nn.ModuleList()
        for _ in self.fft_sizes:
            convs, c = [nn.Conv2d(2 * audio_channels, channels, (3, 9), padding=(1, 4))], channels
            for k in range(layers):
                convs.append(nn.Conv2d(c, channels, (3, 9), stride=(1, 2), dilation=(2 ** k, 1), padding=(2 ** k, 4)))
            convs.append(nn.Conv2d(c, channels, 3, padding=1))
            self.scales.append(nn.ModuleList([*[nn.utils.parametrizations.weight_norm(m) for m in convs],
                                              nn.Conv2d(channels, 1, 3, padding=1)]))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        b, c, t = x.shape
        logits, features = [], []
        for n_fft, convs in zip(self.fft_sizes, self.scales):
            spec = torch.stft(x.reshape(b * c, t).float(), n_fft, n_fft // 4, window=torch.hann_window(n_fft, device=x.device),
                              return_complex=True)  # (b c, bins, frames)
            h = torch.view_as_real(spec).reshape(b, c, *spec.shape[1:], 2).permute(0, 1, 4, 3, 2)
            h = h.reshape(b, 2 * c, spec.shape[2], spec.shape[1])  # (batch, 2 channels, frames, bins)
            feats = []
            for conv in convs[:-1]:
                h = F.leaky_relu(conv(h), 0.2)
                feats.append(h)
            logits.append(convs[-1](h).squeeze(1))
            features.append(feats)
        return logits, features
