"""Phase from an STFT magnitude without iterating: Phase Gradient Heap Integration (PGHI).

Průša, Balazs & Søndergaard, "A noniterative method for reconstruction of phase from STFT
magnitude", IEEE/ACM TASLP 2017. For a Gaussian window the STFT is analytic up to a known factor,
so the phase gradient follows from the log-magnitude gradient (Cauchy-Riemann). With the window
centred on each frame and time measured from the frame's centre (frequency-invariant phase):

    d phase / d time      = (1 / lam) d log|S| / d freq + 2 pi freq
    d phase / d frequency = -lam d log|S| / d time

(``lam``: the Gaussian's time-frequency ratio; a Hann window of length L matches lam = 0.25645 L^2).
The phase is then integrated from the loudest bin outwards (a max-heap over the magnitude), so
errors start where the signal is strongest; bins ``tolerance_db`` under the loudest get a random
phase. It is a much better start for Griffin-Lim than a random or zero phase (the paper's Fig. 5).
"""
from __future__ import annotations

import heapq
import math

import numpy as np
import torch

HANN_LAMBDA = 0.25645  # lam / L^2 of the Gaussian that matches a Hann window of length L (the paper's Table I)


def pghi_phase(magnitude: torch.Tensor, n_fft: int, hop: int, *, tolerance_db: float = 50.0,
               seed: int = 0) -> torch.Tensor:
    """(batch, n_fft // 2 + 1, frames) STFT magnitude (Hann window n_fft, hop, centred frames, as
    torch.stft) -> (batch, n_fft // 2 + 1, frames) phase in torch.stft's convention. Every item is
    integrated on its own, with its own copy of the random phase drawn from ``seed`` for the bins it
    leaves out, so an item's phase does not depend on the rest of the batch."""
    if magnitude.ndim != 3 or magnitude.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"pghi_phase wants (batch, {n_fft // 2 + 1}, frames) magnitudes, got shape "
                         f"{tuple(magnitude.shape)}")
    mags = magnitude.detach().double().cpu().numpy()
    phases = [_integrate(m, n_fft, hop, tolerance_db, seed) for m in mags]
    return torch.from_numpy(np.stack(phases)).to(device=magnitude.device, dtype=magnitude.dtype)


def _integrate(magnitude: np.ndarray, n_fft: int, hop: int, tolerance_db: float, seed: int) -> np.ndarray:
    bins, frames = magnitude.shape
    lam = HANN_LAMBDA * n_fft ** 2
    log_s = np.log(np.maximum(magnitude, 1e-30))
    freq = np.arange(bins)[:, None]
    # phase steps between neighbouring bins (per frame and per bin), from centred differences of log|S|
    step_time = hop * n_fft / lam * np.gradient(log_s, axis=0) + 2 * math.pi * hop * freq / n_fft
    step_freq = -lam / (n_fft * hop) * np.gradient(log_s, axis=1) if frames > 1 else np.zeros_like(log_s)
    phase = np.random.default_rng(seed).uniform(0, 2 * math.pi, size=log_s.shape)
    done = log_s < log_s.max() - tolerance_db / 20 * math.log(10)
    for start in np.argsort(-log_s, axis=None):
        k0, t0 = divmod(int(start), frames)
        if done[k0, t0]:
            continue
        phase[k0, t0], done[k0, t0] = 0.0, True
        heap = [(-log_s[k0, t0], k0, t0)]
        while heap:
            _, k, t = heapq.heappop(heap)
            for nk, nt, step, sign in ((k, t + 1, step_time, 1), (k, t - 1, step_time, -1),
                                       (k + 1, t, step_freq, 1), (k - 1, t, step_freq, -1)):
                if 0 <= nk < bins and 0 <= nt < frames and not done[nk, nt]:
                    # trapezoid rule between the two bins' gradients
                    phase[nk, nt] = phase[k, t] + sign * 0.5 * (step[k, t] + step[nk, nt])
                    done[nk, nt] = True
                    heapq.heappush(heap, (-log_s[nk, nt], nk, nt))
    # torch.stft times each frame from its first sample, i.e. n_fft / 2 before the window's centre
    return phase + math.pi * freq
