"""Phase Gradient Heap Integration (multidiff.audio.phase) against known answers."""
import math

import pytest
import torch

from multidiff.audio.phase import pghi_phase
from multidiff.audio.spectrogram import griffin_lim

SR, N_FFT, HOP = 16000, 512, 128


def stft(wave: torch.Tensor) -> torch.Tensor:
    return torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, return_complex=True)


def spectral_convergence(wave: torch.Tensor, magnitude: torch.Tensor) -> float:
    """How far the magnitude of the audio made from a phase is from the magnitude it was made for."""
    return float((stft(wave).abs() - magnitude).norm() / magnitude.norm())


def wrap(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_phase_advance_of_a_sinusoid_is_its_frequency(offset):
    """A sinusoid between bins k and k + 1 advances by 2 pi f hop / sr per frame in torch.stft's
    convention; PGHI recovers that advance at the peak bin from the magnitude alone (the frequency
    offset through the log-magnitude slope across bins)."""
    k = 40
    f = (k + offset) * SR / N_FFT
    t = torch.arange(SR // 2, dtype=torch.float64) / SR
    mag = stft(torch.sin(2 * math.pi * f * t))[None].abs()
    phase = pghi_phase(mag, N_FFT, HOP)[0, k, 4:-4]  # frames away from the clip's edges
    advance = wrap(phase[1:] - phase[:-1])
    expected = wrap(torch.tensor(2 * math.pi * f * HOP / SR, dtype=torch.float64))
    assert float(wrap(advance - expected).abs().max()) < 0.05


def test_pghi_phase_makes_a_consistent_spectrum_and_a_better_griffin_lim_start():
    """From the true magnitude of a chirp with harmonics, PGHI's phase alone gives audio whose STFT
    magnitude is close to it (random phase: far), and Griffin-Lim started there ends closer than
    from a random phase with the same iterations."""
    t = torch.arange(SR, dtype=torch.float64) / SR
    f0 = 150 + 100 * t  # a rising voice-like pitch
    cycles = torch.cumsum(f0, 0) / SR
    wave = sum(torch.sin(2 * math.pi * h * cycles) / h for h in range(1, 8)) * torch.hann_window(SR, dtype=torch.float64)
    mag = stft(wave)[None].abs()
    samples = wave.shape[-1]
    phase = pghi_phase(mag, N_FFT, HOP)
    made = torch.istft(torch.polar(mag, phase), N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64),
                       center=True, length=samples)
    random = torch.rand(mag.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 * math.pi
    made_random = torch.istft(torch.polar(mag, random), N_FFT, HOP, window=torch.hann_window(N_FFT, dtype=torch.float64),
                              center=True, length=samples)
    assert spectral_convergence(made[0], mag[0]) < 0.1 < 0.6 < spectral_convergence(made_random[0], mag[0])
    from_pghi = griffin_lim(mag, N_FFT, HOP, samples, 16, phase=phase)
    from_random = griffin_lim(mag, N_FFT, HOP, samples, 16)
    assert spectral_convergence(from_pghi[0], mag[0]) < 0.25 * spectral_convergence(from_random[0], mag[0])


def test_pghi_is_per_item_and_checks_its_input():
    g = torch.Generator().manual_seed(1)
    mags = stft(torch.randn(3, 4000, generator=g, dtype=torch.float64)).abs()
    torch.testing.assert_close(pghi_phase(mags, N_FFT, HOP)[1], pghi_phase(mags[1:2], N_FFT, HOP)[0])
    silent = pghi_phase(torch.zeros(1, N_FFT // 2 + 1, 5), N_FFT, HOP)  # a silent input still gets a finite phase
    assert torch.isfinite(silent).all()
    with pytest.raises(ValueError, match=r"\(batch, 257, frames\)"):
        pghi_phase(mags[0], N_FFT, HOP)
