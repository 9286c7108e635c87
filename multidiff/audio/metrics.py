"""Audio metrics.

* ``AudioClassifier``: a small CNN on log-mel spectrograms, trained on the real training
  data; gives SC09-style scores on generated audio (Donahue et al. 2019; Kong et al.
  2021, DiffWave): accuracy against the requested class, Inception Score, and the
  Frechet distance of its penultimate embeddings against held-out real audio.
* ``pitch_accuracy``: share of generated notes within ``tolerance_cents`` of the
  requested pitch, from librosa's pYIN (Mauch & Dixon 2014) median f0.
* ``noise_floor_db``: energy outside the harmonics of pYIN's f0, relative to all energy
  (dB), the hiss or buzz of a pitched note that pitch accuracy cannot see.
* ``multires_stft_distance`` (Yamamoto et al. 2020, Eq. 4-6) and ``si_sdr``
  (Le Roux et al. 2019) for continuation / inpainting against the truth.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..frechet import feature_frechet_distance


# --------------------------------------------------------------------- reference metrics
def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB, per sample: (batch, ..., samples) -> (batch,)."""
    est = estimate.reshape(estimate.shape[0], -1).double()
    ref = reference.reshape(reference.shape[0], -1).double()
    est = est - est.mean(1, keepdim=True)
    ref = ref - ref.mean(1, keepdim=True)
    scale = (est * ref).sum(1, keepdim=True) / (ref.pow(2).sum(1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return (10 * torch.log10((target.pow(2).sum(1) + eps) / (noise.pow(2).sum(1) + eps))).float()


def multires_stft_distance(estimate: torch.Tensor, reference: torch.Tensor,
                           fft_sizes: Sequence[int] = (512, 1024, 2048), eps: float = 1e-7,
                           silence_rms: float = 0.0) -> torch.Tensor:
    """Multi-resolution STFT distance (Yamamoto et al. 2020, Eqs. 4-6): per resolution, spectral
    convergence plus L1 of log magnitudes, averaged over resolutions. (batch, ..., samples) ->
    (batch,), differentiable, on the inputs' device; 0 for identical signals. Every channel is
    transformed on its own; resolutions longer than the signal are skipped.

    The metric and the autoencoders' training term (``eps`` 1e-5, ``silence_rms`` 1e-3) are this one
    function. Spectral convergence divides by the reference's spectral norm, which is 0 for a silent
    crop; with ``silence_rms`` > 0 the norm is floored at that of white noise of that rms (1e-3:
    -60 dBFS), so silence costs about 1 per unit of estimate at that level instead of dividing by ``eps``."""
    est = estimate.reshape(-1, estimate.shape[-1]).float()
    ref = reference.reshape(-1, reference.shape[-1]).float()
    batch = estimate.shape[0]
    sizes = [n for n in fft_sizes if n <= est.shape[-1]] or [est.shape[-1]]
    total = est.new_zeros(batch)
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=est.device)
        kw = dict(n_fft=n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
        e = torch.stft(est, **kw).abs().reshape(batch, -1)
        r = torch.stft(ref, **kw).abs().reshape(batch, -1)
        # white noise of rms a has E|X|^2 = a^2 sum(window^2) per bin
        floor = silence_rms * math.sqrt(float(window.square().sum()) * r.shape[1])
        convergence = torch.linalg.norm(r - e, dim=1) / torch.linalg.norm(r, dim=1).clamp(min=max(floor, eps))
        log_mag = (torch.log(r + eps) - torch.log(e + eps)).abs().mean(1)
        total = total + convergence + log_mag
    return total / len(sizes)


def midi_to_hz(pitch) -> float:
    return 440.0 * 2 ** ((float(pitch) - 69) / 12)


def estimate_pitch(wave: torch.Tensor, sample_rate: int, fmin: float = 50.0, fmax: float = 2000.0) -> float:
    """Median voiced f0 (Hz) of a (channels, samples) or (samples,) waveform by pYIN; nan if unvoiced."""
    import librosa

    y = wave.detach().float().cpu().reshape(-1, wave.shape[-1]).mean(0).numpy()
    f0, voiced, _ = librosa.pyin(y, fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=2048)
    f0 = f0[voiced & np.isfinite(f0)] if voiced is not None else f0[np.isfinite(f0)]
    return float(np.median(f0)) if f0.size else float("nan")


def cents_error(f0: float, target_pitch: float) -> float:
    """|1200 log2(f0 / f_target)| in cents, inf when f0 is nan."""
    if not math.isfinite(f0) or f0 <= 0:
        return float("inf")
    return abs(1200 * math.log2(f0 / midi_to_hz(target_pitch)))


def pitch_accuracy(waves: Sequence[torch.Tensor], target_pitches: Sequence[float], sample_rate: int,
                   tolerance_cents: float = 50.0) -> dict:
    """Share of waves whose pYIN pitch lies within tolerance of the requested MIDI pitch."""
    errors = [cents_error(estimate_pitch(w, sample_rate), p) for w, p in zip(waves, target_pitches)]
    errors = np.asarray(errors)
    return {"accuracy": float((errors <= tolerance_cents).mean()),
            "median_cents": float(np.median(errors)), "n": int(errors.size)}


def intonation(waves: Sequence[torch.Tensor], sample_rate: int, fmin: float = 60.0, fmax: float = 2000.0) -> dict:
    """Is generated music tonal and in tune? pYIN over each wave (frames of 2048 samples):

    ``voiced_fraction``  share of frames pYIN calls voiced (loose: it calls much of white noise voiced);
    ``in_tune_cents``    median distance of voiced frames' f0 to the nearest equal-tempered
                         semitone (A4 = 440 Hz); pitch-less noise gives about 25 (uniform
                         on [-50, 50]), a tuned instrument a few cents;
    ``in_tune_fraction`` share of voiced frames within 5 cents of a semitone. pYIN reports f0 on a
                         grid of 10-cent steps (anchored at ``fmin``), so the median above moves in
                         steps of 10 cents; this share separates models the median ties;
    ``distinct_semitones``  mean number of semitones held for >= 5 consecutive voiced frames
                         per wave (a melody moves, a drone does not).
    """
    import librosa

    voiced_share, deviations, distinct = [], [], []
    for wave in waves:
        y = wave.detach().float().cpu().reshape(-1, wave.shape[-1]).mean(0).numpy()
        f0, voiced, _ = librosa.pyin(y, fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=2048)
        ok = voiced & np.isfinite(f0)
        voiced_share.append(float(ok.mean()))
        midi = 69 + 12 * np.log2(f0[ok] / 440.0)
        deviations.extend(np.abs(midi - np.round(midi)) * 100)
        held, run, last = set(), 0, None
        for m in np.where(ok, np.round(69 + 12 * np.log2(np.where(ok, f0, 440.0) / 440.0)), np.nan):
            run = run + 1 if (m == last) else 1
            last = m
            if run >= 5 and np.isfinite(m):
                held.add(int(m))
        distinct.append(len(held))
    return {"voiced_fraction": float(np.mean(voiced_share)) if voiced_share else float("nan"),
            "in_tune_cents": float(np.median(deviations)) if deviations else float("nan"),
            "in_tune_fraction": float(np.mean(np.asarray(deviations) <= 5.0)) if deviations else float("nan"),
            "distinct_semitones": float(np.mean(distinct)) if distinct else float("nan"), "n": len(voiced_share)}


def harmonic_mask(f0: np.ndarray, n_fft: int, sample_rate: int, lobe_bins: float = 4.5,
                  f0_tolerance_cents: float = 10.0) -> np.ndarray:
    """(n_fft // 2 + 1, frames) bool: the bins within ``lobe_bins`` (the 4-term Blackman-Harris main
    lobe is +-4 bins)
    plus the f0 tolerance (pYIN's 10-cent grid, scaled by the harmonic number) of any harmonic of
    each frame's f0; a frame with f0 nan has no harmonic bins."""
    bins = np.arange(n_fft // 2 + 1)[:, None] * (sample_rate / n_fft)  # Hz
    mask = np.zeros((bins.shape[0], len(f0)), dtype=bool)
    stretch = 2 ** (f0_tolerance_cents / 1200) - 1
    for t, f in enumerate(f0):
        if not np.isfinite(f) or f <= 0:
            continue
        harmonics = np.arange(1, int(sample_rate / 2 // f) + 1) * f  # (H,)
        width = lobe_bins * sample_rate / n_fft + harmonics * stretch
        mask[:, t] = (np.abs(bins - harmonics[None]) <= width[None]).any(1)
    return mask


def noise_floor_db(wave: torch.Tensor, sample_rate: int, f0: float | np.ndarray | None = None, *,
                   n_fft: int = 4096, hop: int = 1024, fmin: float = 50.0, fmax: float = 2000.0) -> float:
    """Energy outside the harmonics, relative to all the energy, in dB (10 log10 of the ratio):
    -inf for a pure periodic tone, 0 for silence-free noise with no pitch. A pitched note's
    broadband hiss or a buzz between harmonics raises it; pitch accuracy cannot see either.

    The harmonics are those of each STFT frame's f0 (4-term Blackman-Harris window ``n_fft``, whose
    side lobes at -92 dB keep a pure tone's leakage far below any audible floor; hop ``hop``; frames
    wholly inside the clip, so its edges are not a click): ``f0`` given (Hz, one value or one per frame), else pYIN's per-frame f0 on the same frames, and
    for frames pYIN calls unvoiced the clip's median voiced f0 (their hiss is noise too). nan when
    pYIN finds no voiced frame or the clip is shorter than ``n_fft``. For white noise of variance s^2 under a sine of amplitude A over N
    samples the expected value is s^2 n_out / (s^2 (n_fft/2 + 1) + A^2 n_fft / 4) per frame, n_out
    the bins outside the harmonics (tests/test_audio_metrics.py checks it)."""
    import librosa

    y = wave.detach().float().cpu().reshape(-1, wave.shape[-1]).mean(0).numpy().astype(np.float64)
    if y.size < n_fft:  # shorter than one analysis frame: no answer rather than a guess
        return float("nan")
    spec = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window="blackmanharris", center=False)) ** 2
    frames = spec.shape[1]
    if f0 is None:
        f0, voiced, _ = librosa.pyin(y.astype(np.float32), fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=n_fft,
                                     hop_length=hop, center=False)
        f0 = np.where(voiced & np.isfinite(f0), f0, np.nan)[:frames]
        if not np.isfinite(f0).any():
            return float("nan")
        f0 = np.where(np.isfinite(f0), f0, np.nanmedian(f0))
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (frames,))
    mask = harmonic_mask(f0, n_fft, sample_rate)
    total = spec.sum()
    if total <= 0:
        return float("nan")
    outside = spec[~mask].sum()
    return float(10 * np.log10(max(outside / total, 1e-30)))


def noise_floor(waves: Sequence[torch.Tensor], sample_rate: int, f0s: Sequence[float] | None = None) -> dict:
    """Median and 90th percentile of :func:`noise_floor_db` over waves (nan ones left out)."""
    values = np.asarray([noise_floor_db(w, sample_rate, None if f0s is None else f0s[k])
                         for k, w in enumerate(waves)])
    values = values[np.isfinite(values)]
    return {"median_db": float(np.median(values)) if values.size else float("nan"),
            "p90_db": float(np.percentile(values, 90)) if values.size else float("nan"), "n": int(values.size)}


# ---------------------------------------------------------------------------- classifier
class LogMel(nn.Module):
    """(batch, channels, samples) -> (batch, 1, n_mels, frames) log-mel (torchaudio)."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, n_fft: int = 1024):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave.float().mean(1)) + 1e-5)[:, None]


@functools.lru_cache(maxsize=8)
def _log_mel(sample_rate: int, n_mels: int, n_fft: int) -> LogMel:  # the filterbank is built once per setting
    return LogMel(sample_rate, n_mels, n_fft)


def mel_conditioning(wave: torch.Tensor, sample_rate: int, n_mels: int = 64, hop: int = 256) -> torch.Tensor:
    """The conditioning signal of a diffusion vocoder (Kong et al. 2021, DiffWave Sec. 3.3):
    (batch, channels, samples) -> (batch, n_mels, samples), the log-mel spectrogram (window 4 hop,
    hop ``hop``) scaled to about [-1, 1] ((log mel + 5) / 5) and linearly upsampled to the sample rate,
    so it joins the waveform as extra input channels."""
    mel = _log_mel(sample_rate, n_mels, 4 * hop).to(wave.device)(wave)[:, 0]  # (batch, n_mels, frames)
    mel = (mel + 5.0) / 5.0
    return nn.functional.interpolate(mel, size=wave.shape[-1], mode="linear", align_corners=False)


def griffin_lim_from_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 64, hop: int = 256,
                         iterations: int = 64) -> torch.Tensor:
    """The classic non-learned vocoder baseline: the mel of ``wave`` (batch, channels, samples)
    inverted to a linear spectrogram (non-negative least squares) and phase-retrieved by fast
    Griffin-Lim (multidiff.audio.spectrogram, the mel route's decoder); returns (batch, 1, samples)."""
    import torchaudio

    from .spectrogram import griffin_lim, nonnegative_mel_inverse

    n_fft = 4 * hop
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=1.0)
    magnitude = nonnegative_mel_inverse(mel(wave.float().mean(1)), mel.mel_scale.fb)
    out = griffin_lim(magnitude, n_fft, hop, wave.shape[-1], iterations)
    return out[:, None]


class AudioClassifier(nn.Module):
    """Small CNN on log-mel: (batch, channels, samples) -> logits (batch, num_classes).

    ``embed`` returns the 128-d penultimate features used for the Frechet distance.
    """

    def __init__(self, num_classes: int, sample_rate: int = 16000, n_mels: int = 64):
        super().__init__()
        self.sample_rate = sample_rate
        self.features = LogMel(sample_rate, n_mels)
        self.norm = nn.BatchNorm2d(1)

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 128), block(128, 128),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(128, num_classes)

    MIN_FRAMES = 16  # four 2x poolings

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.features(wave)
        if mel.shape[-1] < self.MIN_FRAMES:  # a clip shorter than 16 hops: repeat its last frame
            mel = nn.functional.pad(mel, (0, self.MIN_FRAMES - mel.shape[-1], 0, 0), mode="replicate")
        return self.body(self.norm(mel))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(wave))


def train_classifier(waves: torch.Tensor, labels: torch.Tensor, num_classes: int, sample_rate: int = 16000,
                     epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     augment_shift: int = 1600, noise_snr_db: tuple[float, float] | None = (0.0, 40.0),
                     noise_probability: float = 0.75, progress: bool = True) -> AudioClassifier:
    """Fit an AudioClassifier on (N, channels, samples) waves with (N,) labels.

    Augmentation: random circular time shift up to ``augment_shift`` samples, gain, and (with
    probability ``noise_probability``) white noise at an SNR drawn uniformly from
    ``noise_snr_db``. Without the noise, a classifier trained on clean synthetic speech
    (exact digital silence around each word) misreads clean held-out speech plus a -40 dB
    noise floor about half the time, so it would score generated audio on its noise floor
    rather than on the word it says.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AudioClassifier(num_classes, sample_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * math.ceil(len(waves) / batch_size))
    epochs_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_iter = tqdm(epochs_iter, desc="training classifier")
    model.train()
    for _ in epochs_iter:
        order = torch.randperm(len(waves), generator=g)
        for start in range(0, len(waves), batch_size):
            idx = order[start:start + batch_size]
            x = waves[idx]
            if augment_shift:
                shifts = torch.randint(-augment_shift, augment_shift + 1, (len(idx),), generator=g)
                x = torch.stack([torch.roll(w, int(s), dims=-1) for w, s in zip(x, shifts)])
            x = x * (0.5 + torch.rand(len(idx), 1, 1, generator=g))
            if noise_snr_db is not None and noise_probability > 0:
                lo, hi = noise_snr_db
                snr = lo + (hi - lo) * torch.rand(len(idx), 1, 1, generator=g)
                rms = x.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
                on = (torch.rand(len(idx), 1, 1, generator=g) < noise_probability).to(x.dtype)
                x = x + on * rms * 10 ** (-snr / 20) * torch.randn(x.shape, generator=g)
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def classifier_outputs(model: AudioClassifier, waves: torch.Tensor, batch_size: int = 128):
    """(probabilities (N, classes), embeddings (N, 128)) for (N, channels, samples) waves."""
    model.eval()
    probs, embs = [], []
    for start in range(0, len(waves), batch_size):
        e = model.embed(waves[start:start + batch_size])
        embs.append(e)
        probs.append(model.head(e).softmax(-1))
    return torch.cat(probs), torch.cat(embs)


def inception_score(probs: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016)."""
    p = probs.double().clamp(min=eps)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(1).mean()))


def classifier_scores(model: AudioClassifier, generated: torch.Tensor, requested: torch.Tensor | None,
                      real_heldout: torch.Tensor) -> dict:
    """SC09-style scores: accuracy vs requested labels, Inception Score, Frechet distance to held-out real audio."""
    probs, emb = classifier_outputs(model, generated)
    _, emb_real = classifier_outputs(model, real_heldout)
    out = {"inception_score": inception_score(probs), "frechet_distance": feature_frechet_distance(emb, emb_real),
           "n": int(len(generated))}
    if requested is not None:
        out["accuracy"] = float((probs.argmax(1) == requested.to(probs.device)).float().mean())
    return out


def judge_report(model: AudioClassifier, real: torch.Tensor, labels: torch.Tensor, snr_db: float = 20.0,
                 seed: int = 0) -> dict:
    """An evaluation classifier's own accuracy on real held-out clips and on the same clips with white
    noise at ``snr_db`` (a realistic degradation): printed beside every score it gives."""
    g = torch.Generator().manual_seed(seed)
    rms = real.pow(2).mean(dim=tuple(range(1, real.ndim)), keepdim=True).sqrt()
    noisy = real + rms * 10 ** (-snr_db / 20) * torch.randn(real.shape, generator=g)
    labels = labels.to(torch.long)

    def accuracy(x):
        return float((classifier_outputs(model, x)[0].argmax(1).cpu() == labels).float().mean())

    return {"real_accuracy": accuracy(real), f"real_accuracy_snr{snr_db:g}": accuracy(noisy)}


# ------------------------------------------------------------------- classifier on disk
def save_classifier(model: AudioClassifier, path, extra: dict | None = None) -> None:
    """safetensors weights + a JSON sidecar (num_classes, sample_rate, extra facts)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    meta = {"num_classes": model.head.out_features, "sample_rate": model.sample_rate, **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def load_classifier(path) -> AudioClassifier:
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio classifier {path} does not exist (train one with datasets/train_classifier.py)")
    meta = json.loads(path.with_suffix(".json").read_text())
    model = AudioClassifier(int(meta["num_classes"]), int(meta["sample_rate"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_split(manifest, split: str | None, sample_rate: int, length: int, limit: int | None = None):
    """(waves (N, 1, length), labels (N,)) of a manifest split, centred crops, no augmentation."""
    from .data import AudioDataset

    ds = AudioDataset(manifest, sample_rate, 1, length, split=split, random_crop=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[k] for k in range(n)]
    return torch.stack([it["x"] for it in items]), torch.tensor([it["label"] for it in items])
