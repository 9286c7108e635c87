"""Video metrics: PSNR closed form, SSIM against skimage, the repeat-last-frame baseline,
Frechet distance closed form, classifier features, FVD through a local TorchScript file."""
import math

import numpy as np
import pytest
import torch

from multidiff.video.metrics import (
    VideoClassifier,
    best_shifts,
    classifier_frechet_distance,
    constant_velocity_frames,
    frechet_distance,
    given_frame_mask,
    i3d_fvd,
    linear_blend_frames,
    nearest_given_frame,
    prediction_report,
    psnr,
    repeat_last_frame,
    shift_frames,
    ssim,
)


@pytest.fixture(autouse=True)
def _threads(single_thread):
    yield


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 3, 8, 8, dtype=torch.float64)
    y = x + 0.1
    y[1, :, 2] += 0.1  # frame 2 of clip 1 is off by 0.2
    p = psnr(y, x)
    assert p.shape == (2, 3)
    assert float(p[0, 0]) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)
    assert float(p[1, 2]) == pytest.approx(10 * math.log10(4 / 0.04), abs=1e-9)
    assert math.isinf(float(psnr(x, x)[0, 0]))


def test_ssim_matches_skimage_and_closed_cases():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 2, 24, 20, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    ours = ssim(a, b)
    assert ours.shape == (2, 2)
    for i in range(2):
        for t in range(2):
            ref = metrics.structural_similarity(a[i, :, t].numpy().astype(np.float64), b[i, :, t].numpy().astype(np.float64),
                                                data_range=2.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False)
            assert float(ours[i, t]) == pytest.approx(ref, abs=1e-6)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, 2, dtype=torch.float64))
    # a constant offset c on constant frames: SSIM = luminance term (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1)
    x, y = (torch.full((1, 1, 1, 16, 16), v, dtype=torch.float64) for v in (0.2, 0.6))
    c1 = (0.01 * 2) ** 2
    assert float(ssim(x, y)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1), abs=1e-9)


def test_repeat_last_frame_and_prediction_report():
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(3, 1, 6, 16, 16, generator=g) * 2 - 1
    base = repeat_last_frame(truth, 2)
    torch.testing.assert_close(base[:, :, :2], truth[:, :, :2])
    torch.testing.assert_close(base[:, :, 5], truth[:, :, 1])
    perfect = prediction_report(truth, truth, given=2)
    assert perfect["mse"] == 0 and perfect["mse_improvement"] == 1.0 and perfect["ssim"] == pytest.approx(1.0)
    assert len(perfect["baseline_psnr_per_frame"]) == 4
    as_baseline = prediction_report(base, truth, given=2)
    assert as_baseline["mse"] == pytest.approx(as_baseline["baseline_mse"]) and as_baseline["mse_improvement"] == pytest.approx(0)
    # halfway between the baseline and the truth: MSE / 4 -> 75% better
    half = prediction_report(0.5 * (base + truth), truth, given=2)
    assert half["mse_improvement"] == pytest.approx(0.75, abs=1e-9)
    static = truth[:, :, :1].expand(-1, -1, 6, -1, -1)
    assert prediction_report(static, static, given=1)["baseline_mse"] == 0


def test_interpolation_baselines_and_report_score_the_gap_only():
    """given 4 of 8 frames for interpolation: frames 0, 1 and 6, 7; the gap 2..5 lies between frame 1
    and frame 6, at fractions 1/5 .. 4/5 of the way."""
    assert given_frame_mask(8, "interpolate", 4).tolist() == [True, True, False, False, False, False, True, True]
    assert given_frame_mask(8, "predict", 3).tolist() == [True] * 3 + [False] * 5
    assert given_frame_mask(6, "interpolate", 1).tolist() == [True, False, False, False, False, True]
    with pytest.raises(ValueError, match="0 < given_frames < frames"):
        given_frame_mask(6, "interpolate", 6)
    with pytest.raises(ValueError, match="'predict' or 'interpolate'"):
        given_frame_mask(6, "generate", 2)
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(2, 1, 8, 12, 12, generator=g) * 2 - 1
    a, b = truth[:, :, 1], truth[:, :, 6]
    near = nearest_given_frame(truth, 4)
    blend = linear_blend_frames(truth, 4)
    for frame, w in zip(range(2, 6), (0.2, 0.4, 0.6, 0.8)):
        torch.testing.assert_close(near[:, :, frame], a if w < 0.5 else b)
        torch.testing.assert_close(blend[:, :, frame], (1 - w) * a + w * b)
    for video in (near, blend):
        torch.testing.assert_close(video[:, :, [0, 1, 6, 7]], truth[:, :, [0, 1, 6, 7]])
    # a brightness ramp is exact for the cross-fade
    ramp = torch.linspace(-1, 1, 8).reshape(1, 1, 8, 1, 1).expand(2, 1, 8, 12, 12)
    torch.testing.assert_close(linear_blend_frames(ramp, 4), ramp)

    report = prediction_report(near, truth, given=4, task="interpolate")
    assert report["scored_frames"] == [2, 3, 4, 5] and report["baseline"] == "copy nearest given frame"
    assert report["mse_improvement"] == pytest.approx(0.0) and len(report["psnr_per_frame"]) == 4
    # errors outside the gap are not scored; halfway to the truth inside it scores 75%
    off = 0.5 * (near + truth)
    off[:, :, [0, 1, 6, 7]] += 1.0
    half = prediction_report(off, truth, given=4, task="interpolate")
    assert half["mse_improvement"] == pytest.approx(0.75, abs=1e-9)
    expected = float((near[:, :, 2:6] - truth[:, :, 2:6]).square().mean())
    assert half["baseline_mse"] == pytest.approx(expected, rel=1e-6)


def test_shift_frames_moves_whole_pixels_and_fills():
    frames = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    out = shift_frames(frames, torch.tensor([1, -2]), torch.tensor([0, 3]), fill=-1.0)
    torch.testing.assert_close(out[0, 0, 1:], frames[0, 0, :3])  # down by one
    assert (out[0, 0, 0] == -1).all()
    torch.testing.assert_close(out[1, 0, :2, 3:], frames[1, 0, 2:, :2])  # up 2, right 3
    assert (out[1, 0, 2:] == -1).all() and (out[1, 0, :, :3] == -1).all()


def test_constant_velocity_frames_is_exact_for_whole_pixel_motion_without_bounces():
    g = torch.Generator().manual_seed(0)
    patch = torch.rand(1, 1, 5, 5, generator=g) * 2 - 1
    video = torch.full((2, 1, 8, 24, 24), -1.0)
    velocity = [(1, 2), (-2, 1)]
    for b, (vy, vx) in enumerate(velocity):
        for t in range(8):
            y, x = 8 + vy * t if vy > 0 else 18 + vy * t, 2 + vx * t
            video[b, :, t, y:y + 5, x:x + 5] = patch[0]
    pred = constant_velocity_frames(video, given=3)
    torch.testing.assert_close(pred, video)
    with pytest.raises(ValueError, match="2 <= given"):
        constant_velocity_frames(video, given=1)


@pytest.mark.parametrize("xs", [[8, 10, 11, 9, 7, 5], [6, 8, 10, 10, 8, 6]])
def test_constant_velocity_frames_follows_a_bounce_inside_the_given_frames(xs):
    """A reflection shortens the shift across it (+1 or 0 instead of +2) and flips the later ones;
    the velocity is the largest shift with the sign of the last (or, after a 0, the opposite of
    the one before), so the frames after the given four are exact where a mean of shifts is not."""
    patch = torch.linspace(-0.5, 1.0, 12).reshape(3, 4)
    video = torch.full((1, 1, 6, 10, 20), -1.0)
    for t, x in enumerate(xs):
        video[0, 0, t, 3:6, x:x + 4] = patch
    torch.testing.assert_close(constant_velocity_frames(video, given=4), video)


def test_best_shifts_agrees_with_an_exhaustive_search_and_finds_a_known_move():
    g = torch.Generator().manual_seed(1)
    src, dst = torch.rand(2, 12, 1, 9, 11, generator=g) * 2 - 1
    span = torch.arange(-3, 4)
    candidates = torch.cartesian_prod(span, span)  # (dy, dx) row-major, as best_shifts orders ties
    errors = torch.stack([(shift_frames(src, c[0].expand(12), c[1].expand(12)) - dst).square().mean((1, 2, 3))
                          for c in candidates], 1)
    assert torch.equal(best_shifts(src, dst, max_shift=3), candidates[errors.argmin(1)])
    moved = shift_frames(src, torch.full((12,), 2), torch.full((12,), -3))
    assert best_shifts(src, moved, max_shift=3).tolist() == [[2, -3]] * 12
    with pytest.raises(ValueError, match="one shape"):
        best_shifts(src, dst[:, :, :8])


def test_frechet_distance_closed_form():
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1 + 4 + 1 - 2 * 2, abs=1e-9)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    want = 2.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert frechet_distance([1.0, 0.0], s1, [0.0, 1.0], s2) == pytest.approx(want, abs=1e-9)


def test_classifier_features_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = VideoClassifier(1, 3, width=8, feature_dim=16).eval()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 1, 4, 16, 16, generator=g) * 2 - 1
    other = torch.rand(40, 1, 4, 16, 16, generator=g) * 0.2 - 1  # dark clips
    assert classifier_frechet_distance(model, real, real) == pytest.approx(0, abs=1e-6)
    assert classifier_frechet_distance(model, other, real) > 1e-3
    model.save(tmp_path / "c.safetensors")
    loaded = VideoClassifier.load(tmp_path / "c.safetensors")
    torch.testing.assert_close(loaded(real[:2]), model(real[:2]))
    with pytest.raises(ValueError, match="multiple of 8"):
        VideoClassifier(1, 3, width=4)


class _FakeI3D(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_i3d_fvd_from_a_local_torchscript(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    g = torch.Generator().manual_seed(0)
    a = torch.rand(12, 1, 16, 8, 8, generator=g) * 2 - 1
    b = torch.rand(12, 1, 16, 8, 8, generator=g) - 1
    same = i3d_fvd(a, a, path, size=16)
    assert same["fvd"] == pytest.approx(0, abs=1e-6) and same["frames"] == 16 and same["num_fake"] == 12
    assert i3d_fvd(b, a, path, size=16)["fvd"] > 0.01
    with pytest.raises(FileNotFoundError, match="does not exist"):
        i3d_fvd(a, a, tmp_path / "missing.pt")
