"""Diffusion over log-mel spectrograms, inverted to audio by Griffin-Lim.

The spectrogram route of speech and music generation (Grad-TTS, Popov et al. 2021; DiffSinger,
Liu et al. 2022): the model generates a (n_mels, frames) log-mel image, 16000 samples of 16 kHz
audio become 80 x 64 values, and a vocoder turns it back into a waveform. Here the vocoder is the
parameter-free one (Griffin & Lim 1984, least-squares mel inversion first), so a recipe trains
one network and nothing else; ``recipes/audio/digits_vocoder.yaml`` trains a diffusion vocoder
for the same mel frames when a learned one is wanted.

:class:`MelCodec` holds the transform both ways; the ``audio_mel`` data set wraps the ``audio``
data set's loading (manifest, resampling, crops, cache) and gives items ``x`` (n_mels, frames);
its modality ``audio_mel`` decodes samples to audio before the audio previews and metrics.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..train.registry import DataSpec
from .data import AudioLoadParams

MODALITY = "audio_mel"
GRIFFIN_LIM = "griffin-lim"


@dataclass(frozen=True)
class MelCodec:
    """Waveform <-> scaled log-mel spectrogram.

    ``encode``: (batch, channels, samples) -> (batch, n_mels, frames), the magnitude mel spectrogram
    (Hann window ``n_fft``, hop ``hop``, centred frames, mono mix), ``(log(max(mel, floor)) - offset) / scale``,
    padded with silence (the floor) to ``frames(samples)`` frames, a multiple of ``frame_multiple``
    so every U-Net level divides it.
    ``decode``: the inverse up to phase: (batch, n_mels, frames) -> (batch, 1, samples); the mel is
    undone by non-negative least squares on the filterbank, the phase by ``griffin_lim_iters``
    iterations of fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99). Values are first capped
    at :attr:`full_scale`: classifier-free guidance extrapolates, and in log space an overshoot of
    0.7 is 12 times the amplitude (measured on notes at guidance 2: peaks of 6.5). Overshoot spread
    over many bands still adds up (peaks of 3 after the cap), so an item whose audio exceeds [-1, 1]
    is then scaled down to peak 1; quieter items are left alone.
    """

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    floor: float = 1e-3
    offset: float = -4.0
    scale: float = 3.6
    frame_multiple: int = 4
    griffin_lim_iters: int = 64

    def __post_init__(self):
        if self.n_fft < self.hop or self.hop < 1:
            raise ValueError(f"mel codec: need 1 <= hop <= n_fft, got hop={self.hop}, n_fft={self.n_fft}")
        if not 0 < self.n_mels <= self.n_fft // 2 + 1:
            raise ValueError(f"mel codec: n_mels must be in [1, {self.n_fft // 2 + 1}] for n_fft {self.n_fft}, "
                             f"got {self.n_mels}")

    def frames(self, samples: int) -> int:
        """Frames of a clip of ``samples`` samples: the centred STFT's 1 + samples // hop, rounded up to
        ``frame_multiple``."""
        return int(math.ceil((1 + samples // self.hop) / self.frame_multiple) * self.frame_multiple)

    @property
    def silence(self) -> float:
        """The encoded value of silence (the floor)."""
        return (math.log(self.floor) - self.offset) / self.scale

    @property
    def full_scale(self) -> float:
        """The encoded value of a band holding a full-scale sine's whole main lobe (amplitude 1: the
        Hann window's peak bin is sum(window) / 2 = n_fft / 4, its two neighbours half that each), the
        loudest a band of audio in [-1, 1] gets in practice."""
        return (math.log(self.n_fft / 2) - self.offset) / self.scale

    def filterbank(self) -> torch.Tensor:
        """(n_fft // 2 + 1, n_mels) triangular mel filters (HTK mel scale, torchaudio's defaults)."""
        return _filterbank(self.n_fft, self.n_mels, self.sample_rate, self.f_min, self.f_max)

    def magnitude(self, mono: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, n_fft // 2 + 1, frames): the STFT magnitude the mel is made of
        (Hann window n_fft, hop, centred frames)."""
        window = torch.hann_window(self.n_fft, device=mono.device)
        return torch.stft(mono.float(), self.n_fft, self.hop, window=window, center=True, return_complex=True).abs()

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 3:
            raise ValueError(f"MelCodec.encode wants (batch, channels, samples), got shape {tuple(wave.shape)}")
        spec = self.magnitude(wave.float().mean(1))
        mel = torch.einsum("bft,fm->bmt", spec, self.filterbank().to(wave.device))
        out = (mel.clamp(min=self.floor).log() - self.offset) / self.scale
        return nn.functional.pad(out, (0, self.frames(wave.shape[-1]) - out.shape[-1]), value=self.silence)

    def silent_frames_gate(self, mel: torch.Tensor, samples: int, tolerance: float = 0.01,
                           span: int | None = None) -> torch.Tensor:
        """(batch, 1, samples): 0 within ``span`` samples around the centre of each frame whose mel is
        at the floor in every band (within ``tolerance``), else 1. Such a frame's Hann window held no
        sound above the floor divided by the window's weight, so the middle of the window held none;
        a Griffin-Lim phase that is not exactly consistent smears the neighbouring frames' sound there
        (pre-echo into the silence before a word). ``span`` defaults to the middle 3/4 of the window,
        where the Hann weight is >= 0.15 (chosen on the design clips, docs/lab-notebook.md: the whole
        window cut real sound at its edges, PESQ -0.05; 3/4 of it kept PESQ and lowered MR-STFT)."""
        span = 3 * self.n_fft // 4 if span is None else int(span)
        if span < 1:
            raise ValueError(f"span must be >= 1 sample, got {span}")
        mel = mel[..., :1 + samples // self.hop]  # the frames past the clip's end are padding, not silence
        silent = (mel.float() <= self.silence + tolerance).all(1).float()[:, None]  # (batch, 1, frames)
        # frame t silences [t hop - span/2, t hop + span/2): a transposed convolution of ones places each span
        covered = nn.functional.conv_transpose1d(silent, silent.new_ones(1, 1, span), stride=self.hop)
        covered = nn.functional.pad(covered[..., span // 2:], (0, samples))[..., :samples]
        return (covered < 0.5).float()

    @torch.no_grad()
    def decode(self, mel: torch.Tensor, samples: int | None = None, *, seed: int = 0,
               iterations: int | None = None, phase_init: str = "random", silence_gate: bool = False) -> torch.Tensor:
        """Log-mel frames -> audio, (batch, 1, samples); ``samples`` defaults to (frames - 1) * hop.
        Griffin-Lim starts every item from the same random phase (``seed``), so an item's audio does
        not depend on the others in the batch; ``phase_init="pghi"`` starts it from the phase that
        Phase Gradient Heap Integration (multidiff.audio.phase) finds for the magnitude instead;
        ``silence_gate`` silences the frames the mel says are silent (silent_frames_gate)."""
        if phase_init not in ("random", "pghi"):
            raise ValueError(f"phase_init must be 'random' or 'pghi', got {phase_init!r}")
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"MelCodec.decode wants (batch, {self.n_mels}, frames), got shape {tuple(mel.shape)}")
        samples = samples if samples is not None else (mel.shape[-1] - 1) * self.hop
        frames = min(mel.shape[-1], 1 + samples // self.hop)  # the padding frames are not audio
        capped = mel[..., :frames].float().clamp(max=self.full_scale)
        magnitude_mel = ((capped * self.scale + self.offset).exp() - self.floor).clamp(min=0)
        magnitude = nonnegative_mel_inverse(magnitude_mel, self.filterbank().to(mel.device))
        phase = None
        if phase_init == "pghi":
            from .phase import pghi_phase

            phase = pghi_phase(magnitude, self.n_fft, self.hop, seed=seed)
        wave = griffin_lim(magnitude, self.n_fft, self.hop, samples, iterations or self.griffin_lim_iters, seed=seed,
                           phase=phase)
        wave = wave[:, None] * self.silent_frames_gate(mel, samples) if silence_gate else wave[:, None]
        peak = wave.abs().amax(-1, keepdim=True)
        return wave / peak.clamp(min=1.0)  # an item louder than full scale is scaled to peak 1


@functools.lru_cache(maxsize=8)
def _filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float | None) -> torch.Tensor:
    import torchaudio

    return torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max or sample_rate / 2, n_mels,
                                                 sample_rate)


def nonnegative_mel_inverse(mel: torch.Tensor, filterbank: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """(batch, n_mels, frames) magnitude mel -> (batch, n_freqs, frames) magnitude spectrum S >= 0 with
    filterbank^T S close to mel: the least-squares solution clamped at zero, refined by multiplicative
    NMF updates (Lee & Seung 2001), which keep S non-negative and only lower the squared error."""
    fb = filterbank.to(mel.dtype)  # (n_freqs, n_mels)
    s = torch.linalg.pinv(fb.T) @ mel
    s = s.clamp(min=0) + 1e-8
    gram = fb @ fb.T  # (n_freqs, n_freqs)
    target = fb @ mel  # (batch, n_freqs, frames)
    for _ in range(iterations):
        s = s * target / (gram @ s).clamp(min=1e-12)
    return s


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, samples: int, iterations: int = 64, *,
                momentum: float = 0.99, seed: int = 0, phase: torch.Tensor | None = None) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013): (batch, n_fft // 2 + 1, frames)
    magnitudes -> (batch, samples) waveform whose STFT magnitude approaches them. Every item starts
    from ``phase`` when given (e.g. a vocoder's), else from one random phase drawn with ``seed``
    (shared, so the result is per-item)."""
    window = torch.hann_window(n_fft, device=magnitude.device)
    if phase is None:
        phase = torch.rand(magnitude.shape[1:], generator=torch.Generator().manual_seed(seed),
                           dtype=magnitude.dtype).expand_as(magnitude) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase.to(magnitude.device))
    previous = torch.zeros_like(angles)
    for _ in range(max(1, iterations)):
        wave = torch.istft(magnitude * angles, n_fft, hop, window=window, center=True, length=samples)
        rebuilt = torch.stft(wave, n_fft, hop, window=window, center=True, return_complex=True)
        accelerated = rebuilt - previous * (momentum / (1 + momentum))
        angles = accelerated / accelerated.abs().clamp(min=1e-16)
        previous = rebuilt
    return torch.istft(magnitude * angles, n_fft, hop, window=window, center=True, length=samples)


# ------------------------------------------------------------------------------ data set
@dataclass
class MelSettings:
    """The mel a model makes or hears: MelCodec's transform settings but the sample rate (the
    data's), shared by the mel data set's params and the mel vocoder's."""

    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    floor: float = 1e-3
    offset: float = -4.0
    scale: float = 3.6

    def mel_codec(self, sample_rate: int, **decoding) -> MelCodec:
        """The MelCodec of these settings at ``sample_rate`` (``decoding``: frame_multiple, griffin_lim_iters)."""
        return MelCodec(sample_rate=sample_rate, **{k: getattr(self, k) for k in MEL_KEYS}, **decoding)


MEL_KEYS = tuple(f.name for f in fields(MelSettings))


@dataclass
class MelDataParams(AudioLoadParams, MelSettings):
    """The ``audio`` data set's loading (:class:`multidiff.audio.data.AudioLoadParams`) and the
    :class:`MelCodec` settings (its ``sample_rate`` is the loading one). Items are decoded once and
    their mel kept in memory when the waveform is the same every epoch (no random crop, no polarity flip)."""

    random_crop: bool = False
    frame_multiple: int = 4
    griffin_lim_iters: int = 64
    #: how samples become audio in previews and metrics: a mel vocoder checkpoint
    #: (recipes/audio/mel_vocoder.yaml) or "griffin-lim"; `multidiff sample / eval --vocoder` overrides it
    vocoder: str = GRIFFIN_LIM

    def codec(self) -> MelCodec:
        return self.mel_codec(self.sample_rate, frame_multiple=self.frame_multiple,
                              griffin_lim_iters=self.griffin_lim_iters)


CODEC_KEYS = tuple(f.name for f in fields(MelCodec))


def codec_from_meta(meta: dict) -> MelCodec:
    """The codec a data spec's meta describes (``spec.meta["mel"]``)."""
    return MelCodec(**{k: meta["mel"][k] for k in CODEC_KEYS})


class MelTrainData(torch.utils.data.Dataset):
    """Items {"x": (n_mels, frames) scaled log-mel, "label", "text"} of an audio folder or manifest."""

    def __init__(self, params: MelDataParams, path: str | None, seed: int):
        if path is None:
            raise ValueError("data.path: the audio_mel data set needs a folder or a manifest (.csv / .jsonl)")
        self.codec = params.codec()
        self.audio = params.dataset(path, seed)
        classes = params.num_classes if params.num_classes is not None else self.audio.num_classes
        self.fixed = not params.random_crop and params.polarity_flip == 0
        self._mels: dict[int, torch.Tensor] = {}
        shape = (params.n_mels, self.codec.frames(params.length))
        meta = {"sample_rate": params.sample_rate, "length": params.length, "channels": params.channels,
                "mel": {k: getattr(self.codec, k) for k in CODEC_KEYS}, "vocoder": params.vocoder}
        self.spec = DataSpec(shape, classes, MODALITY, meta)

    def __len__(self) -> int:
        return len(self.audio)

    @property
    def rows(self) -> list[dict]:
        """The manifest rows (split, caption ...) of the items (the modality contract's ``rows``)."""
        return self.audio.rows

    @property
    def split_record(self) -> dict | None:
        """How a split-less folder was split (multidiff.manifest.select_split); None when the data named it."""
        return self.audio.split_record

    def set_epoch(self, epoch: int) -> None:
        self.audio.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.audio[index]
        mel = self._mels.get(index) if self.fixed else None
        if mel is None:
            mel = self.codec.encode(item["x"][None])[0]
            if self.fixed:
                self._mels[index] = mel
        out = {"x": mel, "text": item["text"]}
        if self.spec.num_classes > 0:
            out["label"] = item["label"] if item["label"] >= 0 else self.spec.num_classes
        return out


def decode_samples(samples: torch.Tensor, spec, batch_size: int = 64) -> torch.Tensor:
    """Generated mels (batch, n_mels, frames) -> audio (batch, 1, the data's length), by the vocoder
    ``spec.meta["vocoder"]`` names (a checkpoint of recipes/audio/mel_vocoder.yaml), else Griffin-Lim.
    A named vocoder that is not there yet is said on stderr, and Griffin-Lim decodes."""
    codec = codec_from_meta(spec.meta)
    length = int(spec.meta["length"])
    vocoder = vocoder_for(spec.meta.get("vocoder") or GRIFFIN_LIM, codec)
    with torch.no_grad():
        if vocoder is None:
            out = [codec.decode(samples[k:k + batch_size].float().cpu(), length)
                   for k in range(0, len(samples), batch_size)]
        else:
            frames = 1 + length // codec.hop  # the frames the clip has; the rest pad to frame_multiple
            out = [vocoder.decode(samples[k:k + batch_size, :, :frames].float().cpu(), length).sample
                   for k in range(0, len(samples), batch_size)]
    return torch.cat(out) if out else samples.new_zeros(0, 1, length)


def vocoder_for(name: str, codec: MelCodec):
    """The mel vocoder checkpoint ``name`` (None for "griffin-lim", or, said on stderr, when the
    checkpoint does not exist yet); a vocoder that hears another mel than ``codec`` is an InputError."""
    import sys
    from pathlib import Path

    from ..errors import InputError

    if name == GRIFFIN_LIM:
        return None
    if not Path(name).exists():
        if name not in _MISSING_SAID:
            _MISSING_SAID.add(name)
            print(f"vocoder {name} not found (train it: multidiff train recipes/audio/mel_vocoder.yaml): decoding "
                  f"with Griffin-Lim", file=sys.stderr)
        return None
    vocoder = _load_vocoder(str(Path(name).resolve()))
    if not isinstance(getattr(vocoder, "codec", None), MelCodec):
        raise InputError(f"vocoder {name}: the checkpoint holds a {type(vocoder).__name__}, not a mel vocoder "
                         f"(model.name audio_mel_vocoder)")
    theirs = {k: getattr(vocoder.codec, k) for k in ("sample_rate", *MEL_KEYS)}
    ours = {k: getattr(codec, k) for k in theirs}
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in theirs if theirs[k] != ours[k])
        raise InputError(f"vocoder {name} hears another mel than this model makes ({diff}): train one on these "
                         f"settings or decode with --vocoder griffin-lim")
    return vocoder


_MISSING_SAID: set[str] = set()  # a missing vocoder is said once per process, not once per batch


@functools.lru_cache(maxsize=2)
def _load_vocoder(path: str):
    from ..train.latents import load_autoencoder

    return load_autoencoder(path)


def audio_spec(spec):
    """The spec of the decoded audio (what the audio previews and metrics read)."""
    meta = spec.meta
    return DataSpec((int(meta.get("channels", 1)), int(meta["length"])), spec.num_classes, "audio",
                    {"sample_rate": meta["sample_rate"]})
