"""Masked sampling (inpainting / continuation): known values are kept, the rest is conditioned on them."""
from __future__ import annotations

import pytest
import torch

from multidiff.core import KnownValueDenoiser, sample, sample_repaint, sigma_grid
from multidiff.toy.gmm import GaussianMixture, two_d_mixture

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


@pytest.mark.parametrize("method", ["euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral", "ddpm", "dpmpp_2m_sde"])
@pytest.mark.parametrize("resample", [1, 3])
def test_known_region_is_exact_at_the_end(method, resample, counter):
    gm = two_d_mixture()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=F64) * 80.0
    known = torch.randn(16, 2, generator=g, dtype=F64)
    mask = torch.zeros(16, 2, dtype=F64)
    mask[::2, 0] = 1  # coordinate 0 known for even samples
    mask[1::4, 1] = 1
    d = counter(gm)
    out = sample(d, x, sigma_grid(8, 0.002, 80.0, "karras"), method,
                 cond={"known": known, "mask": mask}, generator=torch.Generator().manual_seed(1), resample=resample)
    kept = mask.bool()
    assert torch.equal(out[kept], known[kept])
    assert torch.isfinite(out).all()
    # the generated entries are not the known ones
    assert float((out[~kept] - known[~kept]).abs().min()) > 0
    if resample > 1:  # RePaint: resample evaluations per step except the last
        assert len(d.calls) == 7 * resample + 1


def two_mode():
    return GaussianMixture([[-1.0, -1.0], [1.0, 1.0]], 0.25)


@pytest.mark.parametrize("known_x", [1.0, -1.0])
def test_inpainting_picks_the_right_mode(known_x):
    """Known x-coordinate of a two-mode mixture: the generated y follows p(y | x), which is
    N(known_x, 0.25^2) up to a 1e-14 weight on the other mode. Replacement (Song et al. 2021)
    is an approximation that commits some samples before the known value's noisy copy is
    informative; RePaint's resampling fixes that."""
    gm = two_mode()
    n = 400
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 40.0
    known = torch.zeros(n, 2, dtype=F64)
    known[:, 0] = known_x
    cond = {"known": known, "mask": torch.tensor([1.0, 0.0], dtype=F64)}
    grid = sigma_grid(30, 0.002, 40.0, "karras")

    unconditional = sample(gm, x, grid, "euler_ancestral", generator=torch.Generator().manual_seed(1))
    assert 0.35 < float((unconditional[:, 1] * known_x > 0).double().mean()) < 0.65

    for method in ("euler_ancestral", "dpmpp_2m"):
        y = sample(gm, x, grid, method, cond=cond, generator=torch.Generator().manual_seed(1))[:, 1]
        right = y * known_x > 0
        assert float(right.double().mean()) > 0.75, method
        # (replacement leaves some mass between the modes: mean ~0.9 |known_x|, std ~0.3)
        assert float(y[right].mean()) == pytest.approx(known_x, abs=0.15)
        assert float(y[right].std()) == pytest.approx(0.25, abs=0.1)

    y = sample(gm, x, grid, "ddim", cond=cond, generator=torch.Generator().manual_seed(1), resample=4)[:, 1]
    assert float((y * known_x > 0).double().mean()) > 0.97
    assert float(y.mean()) == pytest.approx(known_x, abs=0.1)
    assert float(y.std()) == pytest.approx(0.25, abs=0.08)


def test_repaint_directly_and_callback():
    gm = two_mode()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 40.0
    known = torch.ones(8, 2, dtype=F64)
    mask = torch.tensor([0.0, 1.0], dtype=F64)
    seen = []
    grid = sigma_grid(5, 0.01, 40.0, "karras")
    out = sample_repaint(gm, x, grid, known=known, mask=mask, resample=3, callback=seen.append,
                         generator=torch.Generator().manual_seed(3))
    assert [s["i"] for s in seen] == list(range(5))  # one report per step, not per repeat
    assert torch.equal(out[:, 1], known[:, 1])
    assert (out[:, 0] > 0).all()


def test_known_value_denoiser():
    """Inside the mask the denoiser sees known + z sigma and returns known; outside it is untouched."""
    seen = {}

    def d(x, sigma, cond=None):
        seen["x"] = x
        return x * 0.5

    known = torch.full((2, 3), 7.0, dtype=F64)
    mask = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    wrapped = KnownValueDenoiser(d, known, mask, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    sigma = torch.tensor([2.0, 3.0], dtype=F64)
    out = wrapped(x, sigma)
    expected_in = torch.where(mask.bool(), known + z * sigma[:, None], x)
    torch.testing.assert_close(seen["x"], expected_in)
    torch.testing.assert_close(out, torch.where(mask.bool(), known, expected_in * 0.5))


def test_mask_shape_mismatch_is_rejected():
    gm = two_d_mixture()
    x = torch.zeros(4, 2, dtype=F64)
    grid = sigma_grid(3, 0.01, 10.0)
    with pytest.raises(ValueError, match=r"mask of shape \(3,\)"):
        sample(gm, x, grid, "euler", cond={"known": torch.zeros(4, 2, dtype=F64), "mask": torch.ones(3)})
    with pytest.raises(ValueError, match=r"known has shape \(4, 3\)"):
        sample(gm, x, grid, "euler", cond={"known": torch.zeros(4, 3, dtype=F64), "mask": torch.ones(2)})
    with pytest.raises(ValueError, match="both 'known' and 'mask'"):
        sample(gm, x, grid, "euler", cond={"mask": torch.ones(2)})
