"""A learned mel vocoder: log-mel frames -> STFT magnitude -> waveform.

The mel recipes' spectrograms (multidiff.audio.spectrogram.MelCodec) become audio through a
ConvNeXt stack (Liu et al. 2022; the Vocos layout, Siuzdak 2024) that runs at the frame rate and
predicts each frame's STFT magnitude as a correction of the mel's least-squares inverse, trained by
the magnitude loss of Arik et al. (2018). No up-sampling layers, so it is cheap on a CPU (a second of
16 kHz audio is 63 frames). The head also has a phase output (Vocos') for training with a waveform
loss; trained on the magnitude alone, decoding takes the phase that Phase Gradient Heap Integration
finds for the predicted magnitude (multidiff.audio.phase) and refines it by fast Griffin-Lim
(Tacotron's learned-magnitude route), and silences the frames the mel says are silent.

It trains through the trainer's autoencoder objective (multidiff.train.autoencoder): ``encode``
is the fixed mel transform (a posterior with zero spread), ``decode`` the network, so checkpoints,
EMA and resume are those of the audio autoencoders. ``recipes/audio/mel_vocoder.yaml`` trains it;
the mel recipes decode through it when ``data.params.vocoder`` names its checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from .spectrogram import MelCodec, MelSettings


class ConvNeXtBlock(nn.Module):
    """Depth-wise conv (k 7) -> LayerNorm -> pointwise MLP (GELU) -> layer scale, residual.
    (batch, dim, frames) -> same."""

    def __init__(self, dim: int, hidden: int, layer_scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(x).transpose(1, 2)  # (batch, frames, dim)
        h = self.down(nn.functional.gelu(self.up(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class _Deterministic(SimpleNamespace):
    """A posterior of zero spread (the mel transform), with diffusers' latent_dist attributes."""


class MelVocoder(nn.Module):
    """encode: (batch, channels, samples) -> latent_dist with mean (batch, n_mels, 1 + samples // hop);
    decode: (batch, n_mels, frames) log-mel -> .sample (batch, 1, (frames - 1) * hop) audio."""

    def __init__(self, codec: MelCodec, dim: int = 256, hidden: int = 768, layers: int = 8,
                 max_log_magnitude: float = math.log(100.0), phase_iterations: int = 0, magnitude_weight: float = 0.0,
                 magnitude_floor: float = 1e-2, inverse_floor: float = 1e-7, phase_init: str = "predicted",
                 silence_gate: bool = False, mel_weighted_loss: bool = False):
        super().__init__()
        self.codec = codec
        self.phase_iterations, self.magnitude_weight = phase_iterations, magnitude_weight
        self.loss_floor, self.inverse_floor = magnitude_floor, inverse_floor
        # the log term's weight per frequency bin: uniform, or the mel scale's density (d mel / d f, mean 1),
        # which weighs the harmonics under 1 kHz ~4x the average bin
        freqs = torch.linspace(0, codec.sample_rate / 2, codec.n_fft // 2 + 1)
        density = 1.0 / (700.0 + freqs) if mel_weighted_loss else torch.ones_like(freqs)
        self.register_buffer("bin_weight", (density / density.mean())[:, None], persistent=False)
        if phase_init not in ("predicted", "pghi"):
            raise ValueError(f"phase_init must be 'predicted' or 'pghi', got {phase_init!r}")
        self.phase_init, self.silence_gate = phase_init, silence_gate
        self.max_log_magnitude = max_log_magnitude
        self.embed = nn.Conv1d(codec.n_mels, dim, 7, padding=3)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList([ConvNeXtBlock(dim, hidden, 1.0 / layers) for _ in range(layers)])
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, codec.n_fft + 2)  # per frame: n_fft/2 + 1 log-magnitudes and phases
        self.register_buffer("window", torch.hann_window(codec.n_fft), persistent=False)
        self.register_buffer("inverse_filterbank", torch.linalg.pinv(codec.filterbank().T), persistent=False)
        nn.init.zeros_(self.head.weight)  # start at the mel's least-squares inverse, phase 0
        nn.init.zeros_(self.head.bias)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, channels, samples) -> (batch, n_mels, 1 + samples // hop): the codec's log-mel
        without the padding frames the diffusion models get."""
        return self.codec.encode(wave)[..., : 1 + wave.shape[-1] // self.codec.hop]

    def encode(self, wave: torch.Tensor):
        with torch.no_grad():
            mean = self.mel(wave)
        zero = torch.zeros_like(mean)
        return SimpleNamespace(latent_dist=_Deterministic(mean=mean, std=zero, var=zero, logvar=zero))

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, n_mels, frames) -> (log-magnitude, phase), each (batch, n_fft/2 + 1, frames)."""
        h = self.norm_in(self.embed(mel.float()).transpose(1, 2)).transpose(1, 2)  # (batch, dim, frames)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.norm_out(h.transpose(1, 2))).transpose(1, 2)  # (batch, n_fft + 2, frames)
        correction, phase = out.float().chunk(2, dim=1)
        return (self.mel_inverse(mel) + correction).clamp(max=self.max_log_magnitude), phase

    def mel_inverse(self, mel: torch.Tensor) -> torch.Tensor:
        """The head's starting point: log of the least-squares linear magnitude under the mel
        (pseudo-inverse of the filterbank, clamped at ``inverse_floor``), (batch, n_fft/2 + 1, frames);
        the network learns the correction (the harmonics and detail the mel bands average away). The
        floor lies under the quietest bins of a recording: a higher one (1e-5) leaves a constant hiss in
        the silences, which the multi-resolution STFT distance counts in every silent bin."""
        c = self.codec
        linear_mel = ((mel.float() * c.scale + c.offset).exp() - c.floor).clamp(min=0)
        return (self.inverse_filterbank @ linear_mel).clamp(min=self.inverse_floor).log()

    def forward(self, mel: torch.Tensor, samples: int | None = None, phase_iterations: int = 0,
                phase_init: str | None = None, silence_gate: bool | None = None) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, 1, samples), samples defaulting to (frames - 1) * hop.
        The phase is the predicted one, or with ``phase_init="pghi"`` the one Phase Gradient Heap
        Integration finds for the predicted magnitude (multidiff.audio.phase); ``phase_iterations`` > 0
        refines it by that many fast Griffin-Lim iterations (Tacotron's learned-magnitude route);
        ``silence_gate`` silences the frames the mel says are silent (MelCodec.silent_frames_gate). None: the
        model's own choice."""
        phase_init = self.phase_init if phase_init is None else phase_init
        silence_gate = self.silence_gate if silence_gate is None else silence_gate
        if phase_init not in ("predicted", "pghi"):
            raise ValueError(f"phase_init must be 'predicted' or 'pghi', got {phase_init!r}")
        samples = samples if samples is not None else (mel.shape[-1] - 1) * self.codec.hop
        log_magnitude, phase = self.spectrum(mel)
        if phase_init == "pghi":
            from .phase import pghi_phase

            phase = pghi_phase(log_magnitude.exp(), self.codec.n_fft, self.codec.hop)
        if phase_iterations <= 0:
            wave = self.synthesize(log_magnitude, phase, samples)
        else:
            from .spectrogram import griffin_lim

            wave = griffin_lim(log_magnitude.exp(), self.codec.n_fft, self.codec.hop, samples, phase_iterations,
                               phase=phase)[:, None]
        return wave * self.codec.silent_frames_gate(mel, samples) if silence_gate else wave

    def synthesize(self, log_magnitude: torch.Tensor, phase: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """(batch, n_fft/2 + 1, frames) log-magnitude and phase -> (batch, 1, samples) by the inverse of
        the codec's STFT (its window and hop, centred frames): the STFT of a clip gives the clip back."""
        magnitude = log_magnitude.exp()
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        samples = samples if samples is not None else (spec.shape[-1] - 1) * self.codec.hop
        wave = torch.istft(spec, self.codec.n_fft, self.codec.hop, window=self.window, center=True, length=samples)
        return wave[:, None]

    def decode(self, mel: torch.Tensor, samples: int | None = None, phase_iterations: int | None = None,
               phase_init: str | None = None, silence_gate: bool | None = None):
        """.sample: the audio (forward's; each decoding choice defaulting to the model's own)."""
        iterations = self.phase_iterations if phase_iterations is None else phase_iterations
        return SimpleNamespace(sample=self(mel, samples, iterations, phase_init, silence_gate))

    def reconstruct_with_loss(self, mel: torch.Tensor, wave: torch.Tensor, mask: torch.Tensor | None = None):
        """Training (multidiff.train.autoencoder.AutoencoderLoss): the audio of the predicted spectrum
        as it is (no phase refinement), and ``magnitude_weight`` x the magnitude loss of Arik et al.
        (2018) between the predicted and the clip's STFT (the codec's framing): mean |log S - log S^|
        (both floored at ``loss_floor``, -40 dB under a full-scale bin's ~1-100) + ||S - S^|| / ||S||
        (spectral convergence), per item."""
        log_magnitude, phase = self.spectrum(mel)
        recon = self.synthesize(log_magnitude, phase, wave.shape[-1])
        if not self.magnitude_weight:
            return recon, recon.new_zeros(len(recon))
        target = self.codec.magnitude((wave.float() if mask is None else wave.float() * mask).mean(1))
        magnitude = log_magnitude.exp()
        floor = self.loss_floor  # bins below it in both are inaudible: no gradient from them
        log_error = (log_magnitude.clamp(min=math.log(floor)) - target.clamp(min=floor).log()).abs()
        log_term = (self.bin_weight * log_error).flatten(1).mean(1)
        convergence = (magnitude - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp(min=1e-3)
        return recon, self.magnitude_weight * (log_term + convergence)


@dataclass
class MelVocoderParams(MelSettings):
    """``model.params`` of ``audio_mel_vocoder``: the mel it hears (MelSettings; the sample rate is
    the data's), which must equal the mel recipe's ``data.params`` for it to decode that recipe's
    samples (checked when it does), and the network's width, MLP width and depth."""

    dim: int = 256
    hidden: int = 768
    layers: int = 8
    #: decoding: Griffin-Lim iterations that refine the predicted phase (0: the predicted phase as it is)
    phase_iterations: int = 0
    #: training: weight of the loss on the predicted STFT magnitude itself (MelVocoder.reconstruct_with_loss)
    magnitude_weight: float = 0.0
    #: training: magnitudes below it (in both) count as equal in that loss's log term
    magnitude_floor: float = 1e-2
    #: the magnitude the network's correction starts from is the mel's least-squares inverse, floored here
    inverse_floor: float = 1e-7
    #: decoding: the phase Griffin-Lim starts from: "predicted" (the head's) or "pghi" (Phase Gradient
    #: Heap Integration of the predicted magnitude; for a network trained on the magnitude alone)
    phase_init: str = "predicted"
    #: decoding: silence the middle of the window of every frame whose mel is at the floor in all bands
    silence_gate: bool = False
    #: training: weigh the loss's log term per bin by the mel scale's density (the low harmonics count more)
    mel_weighted_loss: bool = False


def build_mel_vocoder(params: MelVocoderParams, spec, **_) -> MelVocoder:
    """The trainer's ``audio_mel_vocoder`` model for (1, samples) audio data; samples a multiple of hop
    (then the decoded length equals the input's)."""
    if len(spec.sample_shape) != 2 or spec.sample_shape[0] != 1:
        raise ValueError(f"the mel vocoder reads mono (1, samples) audio, got data of shape {tuple(spec.sample_shape)} "
                         f"(data.params.channels: 1)")
    if spec.sample_shape[-1] % params.hop:
        raise ValueError(f"data.params.length ({spec.sample_shape[-1]}) must be a multiple of the vocoder's hop "
                         f"({params.hop}) so the decoded clip has the input's length")
    return MelVocoder(params.mel_codec(int(spec.meta["sample_rate"])), params.dim, params.hidden, params.layers,
                      phase_iterations=params.phase_iterations, magnitude_weight=params.magnitude_weight,
                      magnitude_floor=params.magnitude_floor, inverse_floor=params.inverse_floor,
                      phase_init=params.phase_init, silence_gate=params.silence_gate,
                      mel_weighted_loss=params.mel_weighted_loss)
