"""Audio autoencoders for latent diffusion: diffusers' AutoencoderOobleck (the Stable Audio VAE,
Evans et al. 2024), in size presets, registered as ``audio_oobleck`` for ``objective.kind:
autoencoder``.

(batch, channels, samples) <-> latents (batch, latent_channels, samples / hop): the encoder's
last convolution gives ``encoder_hidden_size`` channels, a mean and a scale per latent channel,
so latent_channels = encoder_hidden_size / 2 and the decoder takes that many. Compression ratio
(samples x channels per latent value) = hop x channels / latent_channels.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

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
