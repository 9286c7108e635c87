import math

import numpy as np
import pytest
import torch

from multidiff.audio.metrics import (
    cents_error,
    classifier_scores,
    inception_score,
    multires_stft_distance,
    pitch_accuracy,
    si_sdr,
    train_classifier,
)
from multidiff.frechet import feature_frechet_distance


def test_si_sdr_known_values():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 1, 8000, generator=g)
    assert (si_sdr(ref * 3.0, ref) > 100).all()  # scale-invariant: a scaled copy is perfect
    noise = torch.randn(2, 1, 8000, generator=g)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref  # orthogonal
    noise = noise / noise.norm(dim=-1, keepdim=True) * ref.norm(dim=-1, keepdim=True) * 0.1
    torch.testing.assert_close(si_sdr(ref + noise, ref), torch.full((2,), 20.0), atol=0.05, rtol=0)


def test_multires_stft_distance_orders_signals():
    t = torch.arange(16000) / 16000
    a = torch.sin(2 * math.pi * 440 * t)[None, None]
    near = torch.sin(2 * math.pi * 445 * t)[None, None]
    far = torch.sin(2 * math.pi * 2000 * t)[None, None]
    assert float(multires_stft_distance(a, a)) == 0.0
    assert float(multires_stft_distance(near, a)) < float(multires_stft_distance(far, a))


def test_pitch_accuracy_on_synthetic_tones():
    sr = 16000
    t = torch.arange(sr) / sr
    waves = [torch.sin(2 * math.pi * 440 * t)[None], torch.sin(2 * math.pi * 466.16 * t)[None]]  # A4, A#4
    result = pitch_accuracy(waves, [69, 69], sr)
    assert result["accuracy"] == 0.5 and result["median_cents"] > 40
    assert math.isinf(cents_error(float("nan"), 69))


def test_inception_score_and_frechet_closed_forms():
    confident = torch.eye(4).repeat(5, 1)
    assert abs(inception_score(confident) - 4.0) < 1e-6
    assert abs(inception_score(torch.full((8, 4), 0.25)) - 1.0) < 1e-9
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(4000, 3)))
    b = torch.from_numpy(rng.normal(size=(4000, 3)) + np.array([1.0, 0.0, 0.0]))
    assert abs(feature_frechet_distance(a, b) - 1.0) < 0.1  # mean shift of 1, same covariance


def test_classifier_learns_separable_tones():
    sr = 8000
    g = torch.Generator().manual_seed(0)
    t = torch.arange(4000) / sr
    freqs = [300.0, 900.0, 2000.0]
    waves, labels = [], []
    for k in range(90):
        c = k % 3
        phase = float(torch.rand(1, generator=g)) * 6.28
        waves.append((0.5 * torch.sin(2 * math.pi * freqs[c] * t + phase) + 0.05 * torch.randn(4000, generator=g))[None])
        labels.append(c)
    waves, labels = torch.stack(waves), torch.tensor(labels)
    model = train_classifier(waves[:60], labels[:60], 3, sample_rate=sr, epochs=8, batch_size=20, progress=False,
                             augment_shift=400)
    scores = classifier_scores(model, waves[60:], labels[60:], waves[:60])
    assert scores["accuracy"] >= 0.9 and scores["inception_score"] > 2.0


def test_noise_floor_of_a_sine_in_white_noise_matches_the_closed_form():
    """Energy outside the harmonics of a sine under white noise of variance s^2: per frame of n_fft
    samples, s^2 n_out / (s^2 (n_fft/2 + 1) + A^2 n_fft / 4) (Parseval, any window), whether f0 is
    given or found by pYIN; a pure tone and a band-limited saw sit below -60 dB."""
    import numpy as np

    from multidiff.audio.metrics import harmonic_mask, midi_to_hz, noise_floor_db

    sr, n, n_fft = 16000, 32000, 4096
    t = torch.arange(n) / sr
    f0 = midi_to_hz(60)
    sine = torch.sin(2 * math.pi * f0 * t)
    n_out = int((~harmonic_mask(np.full(1, f0), n_fft, sr)).sum())
    g = torch.Generator().manual_seed(0)
    for s in (0.001, 0.01, 0.05, 0.3):
        expected = 10 * math.log10(s ** 2 * n_out / (s ** 2 * (n_fft // 2 + 1) + n_fft / 4))
        noisy = sine + s * torch.randn(n, generator=g)
        assert noise_floor_db(noisy, sr, f0) == pytest.approx(expected, abs=0.3)
        assert noise_floor_db(noisy, sr) == pytest.approx(expected, abs=0.3)
    saw = sum((-1) ** (k + 1) * torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, int(sr / 2 // f0)))
    assert noise_floor_db(sine, sr) < -70 and noise_floor_db(0.6 * saw, sr) < -60
    assert math.isnan(noise_floor_db(torch.zeros(n), sr))  # no pitch, no harmonics: no answer rather than a guess
