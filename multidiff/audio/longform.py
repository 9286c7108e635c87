"""Long-form audio by windowed continuation: a model trained on clips of L samples makes any length.

The first window is an ordinary draw. Each next window is a masked draw (multidiff.core.masked:
the given audio re-imposed at every noise level, RePaint resampling optional) whose first
``overlap`` x L samples are the previous window's last ones; its remaining samples extend the
audio. So every stretch of the result was generated knowing the audio just before it, and the
seams lie where a window's new material begins.

``longform_scores`` says whether it holds up: loudness and intonation of the last window against
the first (ratios), and the level jump at every seam against the data's own frame-to-frame level
changes, so a stitched seam can be told apart from the music's own dynamics.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch


def window_plan(total: int, window: int, overlap: float) -> tuple[int, int, list[int]]:
    """(windows, kept samples per continuation, seams): the seams are the sample positions where each
    continuation's new material starts."""
    if not 0 < overlap < 1:
        raise ValueError(f"overlap must lie in (0, 1), got {overlap}")
    keep = int(round(overlap * window))
    step = window - keep
    if keep < 1 or step < 1:
        raise ValueError(f"overlap {overlap} of a {window}-sample window leaves nothing to keep or to add")
    windows = 1 + max(0, math.ceil((total - window) / step))
    return windows, keep, [window + k * step for k in range(windows - 1)]


def generate_long(model, objective, spec, sampling, total: int, *, overlap: float = 0.5, labels=None,
                  resample: int = 1, progress: bool = False) -> tuple[torch.Tensor, list[int]]:
    """(audio (num, channels, total), seams) for ``sampling.num_samples`` items, window by window;
    window k draws with seed ``sampling.seed + k``, so the result does not depend on the batch."""
    from ..train.sampling import Conditioning, generate

    channels, window = spec.sample_shape
    windows, keep, seams = window_plan(total, window, overlap)
    n = sampling.num_samples
    current = generate(model, objective, spec, sampling, Conditioning(labels=labels), progress=progress)
    pieces = [current]
    mask = torch.zeros(1, channels, window)
    mask[..., :keep] = 1
    for k in range(1, windows):
        known = torch.zeros(n, channels, window)
        known[..., :keep] = current[..., -keep:]
        current = generate(model, objective, spec, replace(sampling, seed=sampling.seed + k),
                           Conditioning(labels=labels, known=known, mask=mask, replace=True), resample=resample,
                           progress=progress)
        current = torch.lerp(current, known, mask)  # the given part is given
        pieces.append(current[..., keep:])
    return torch.cat(pieces, -1)[..., :total], [s for s in seams if s < total]


def frame_levels(wave: torch.Tensor, frame: int) -> np.ndarray:
    """(frames,) RMS level in dB (floored at -80) of consecutive ``frame``-sample frames of a mono mix."""
    y = wave.detach().float().reshape(-1, wave.shape[-1]).mean(0)
    frames = y[: len(y) // frame * frame].reshape(-1, frame)
    return (20 * torch.log10(frames.square().mean(1).sqrt().clamp(min=1e-4))).numpy()


def level_variation(waves, frame: int, quantile: float = 0.95) -> float:
    """The data's own frame-to-frame level change: the ``quantile`` of |dB(frame t+1) - dB(frame t)|
    over every adjacent pair of frames with sound (either above -60 dB) of ``waves``."""
    jumps = []
    for w in waves:
        db = frame_levels(w, frame)
        loud = np.maximum(db[1:], db[:-1]) > -60
        jumps.append(np.abs(np.diff(db))[loud])
    jumps = np.concatenate(jumps) if jumps else np.zeros(0)
    return float(np.quantile(jumps, quantile)) if jumps.size else float("nan")


def seam_jumps(wave: torch.Tensor, seams: list[int], frame: int) -> np.ndarray:
    """|dB| level change between the frame ending at each seam and the frame starting there."""
    y = wave.detach().float().reshape(-1, wave.shape[-1]).mean(0)
    out = []
    for s in seams:
        if s - frame < 0 or s + frame > len(y):
            continue
        before = y[s - frame:s].square().mean().sqrt().clamp(min=1e-4)
        after = y[s:s + frame].square().mean().sqrt().clamp(min=1e-4)
        out.append(abs(float(20 * torch.log10(after / before))))
    return np.asarray(out)


def longform_scores(waves: torch.Tensor, seams: list[int], window: int, sample_rate: int, reference=None,
                    frame_seconds: float = 0.02) -> dict:
    """Does a long draw hold up? Over items: the last window's RMS over the first's
    (``loudness_ratio``, 1 = same), pYIN's median in-tune error of the last window over the first's
    (``intonation_ratio``; multidiff.audio.metrics.intonation), the level jump at each seam
    (``seam_jump_db_median`` / ``_max``) against the data's own frame-to-frame change
    (``level_variation_db``: the 95th percentile over ``reference`` clips, else over the first
    windows) and the share of seams above it (``seams_above_variation``; 0 = no seam stands out)."""
    from .metrics import intonation

    frame = max(1, int(round(frame_seconds * sample_rate)))
    first, last = waves[..., :window], waves[..., -window:]

    def rms(x):
        return x.float().flatten(1).square().mean(1).sqrt().clamp(min=1e-8)

    loudness = (rms(last) / rms(first)).numpy()
    first_tune = intonation(list(first), sample_rate)["in_tune_cents"]
    last_tune = intonation(list(last), sample_rate)["in_tune_cents"]
    variation = level_variation(list(reference) if reference is not None else list(first), frame)
    jumps = np.concatenate([seam_jumps(w, seams, frame) for w in waves]) if len(seams) else np.zeros(0)
    return {"loudness_ratio": float(np.median(loudness)),
            "intonation_first_cents": first_tune, "intonation_last_cents": last_tune,
            "intonation_ratio": last_tune / first_tune if first_tune and math.isfinite(first_tune) else float("nan"),
            "level_variation_db": variation,
            "seam_jump_db_median": float(np.median(jumps)) if jumps.size else float("nan"),
            "seam_jump_db_max": float(jumps.max()) if jumps.size else float("nan"),
            "seams_above_variation": float((jumps > variation).mean()) if jumps.size else float("nan"),
            "seams": len(seams), "n": int(len(waves))}
