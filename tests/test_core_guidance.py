"""Classifier-free guidance as a denoiser wrapper."""
from __future__ import annotations

import pytest
import torch

from multidiff.core import Autoguidance, ClassifierFreeGuidance, cfg, rescale_guidance, sample, sigma_grid

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def cond_denoiser(x, sigma, cond=None):
    """A conditional 'denoiser' whose output depends nonlinearly on x, sigma and the label embedding."""
    y = cond["y"]  # (batch, channels)
    s = sigma.to(x.dtype)[:, None, None]
    return torch.tanh(x) / (1 + s) + y[:, :, None] * torch.sin(s + x)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g, dtype=F64)
    sigma = torch.tensor([0.1, 0.7, 2.0, 9.0], dtype=F64)
    cond = {"y": torch.randn(4, 3, generator=g, dtype=F64)}
    uncond = {"y": torch.zeros(1, 3, dtype=F64)}
    return x, sigma, cond, uncond


def manual(x, sigma, cond, uncond, scale):
    d_c = cond_denoiser(x, sigma, cond)
    d_u = cond_denoiser(x, sigma, {"y": uncond["y"].expand_as(cond["y"])})
    return d_u + scale * (d_c - d_u), d_c, d_u


def test_scale_one_is_the_conditional_denoiser(inputs, counter):
    x, sigma, cond, uncond = inputs
    d = counter(cond_denoiser)
    out = cfg(d, 1.0, uncond)(x, sigma, cond)
    assert torch.equal(out, cond_denoiser(x, sigma, cond))
    assert [b for b, _, _ in d.calls] == [4]


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_cfg_equals_the_formula_in_one_batched_call(scale, inputs, counter):
    x, sigma, cond, uncond = inputs
    d = counter(cond_denoiser)
    out = ClassifierFreeGuidance(d, scale, uncond)(x, sigma, cond)
    expected, _, _ = manual(x, sigma, cond, uncond, scale)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert len(d.calls) == 1
    batch, sig, c = d.calls[0]
    assert batch == 8
    torch.testing.assert_close(sig, torch.cat([sigma, sigma]))
    torch.testing.assert_close(c["y"], torch.cat([cond["y"], uncond["y"].expand(4, 3)]))


def test_uncond_as_callable_and_full_batch(inputs):
    x, sigma, cond, _ = inputs
    full = {"y": -cond["y"]}
    a = cfg(cond_denoiser, 3.0, full)(x, sigma, cond)
    b = cfg(cond_denoiser, 3.0, lambda c: {"y": -c["y"]})(x, sigma, cond)
    d_c, d_u = cond_denoiser(x, sigma, cond), cond_denoiser(x, sigma, full)
    torch.testing.assert_close(a, d_u + 3.0 * (d_c - d_u))
    torch.testing.assert_close(b, a)


def test_interval(inputs, counter):
    x, sigma, cond, uncond = inputs
    # no sigma inside (lo, hi]: conditional only, one call of the plain batch
    d = counter(cond_denoiser)
    out = cfg(d, 4.0, uncond, interval=(20.0, 80.0))(x, sigma, cond)
    assert torch.equal(out, cond_denoiser(x, sigma, cond))
    assert [b for b, _, _ in d.calls] == [4]
    # some inside: guided there, conditional elsewhere (sigma 0.7 and 2.0 are in (0.5, 2.0])
    out = cfg(cond_denoiser, 4.0, uncond, interval=(0.5, 2.0))(x, sigma, cond)
    guided, d_c, _ = manual(x, sigma, cond, uncond, 4.0)
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(out[inside], guided[inside])
    torch.testing.assert_close(out[~inside], d_c[~inside])


def test_rescale(inputs):
    x, sigma, cond, uncond = inputs
    plain = cfg(cond_denoiser, 5.0, uncond)(x, sigma, cond)
    torch.testing.assert_close(cfg(cond_denoiser, 5.0, uncond, rescale=0.0)(x, sigma, cond), plain)
    full = cfg(cond_denoiser, 5.0, uncond, rescale=1.0)(x, sigma, cond)
    s = sigma[:, None, None]
    eps_full, eps_cond = (x - full) / s, (x - cond_denoiser(x, sigma, cond)) / s
    torch.testing.assert_close(eps_full.std(dim=(1, 2)), eps_cond.std(dim=(1, 2)), rtol=1e-10, atol=1e-12)
    # rescale = 1 is the guided eps times std(eps_cond) / std(eps_cfg); 0.4 blends 40 / 60
    eps_plain = (x - plain) / s
    ratio = eps_cond.std(dim=(1, 2), keepdim=True) / eps_plain.std(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(eps_full, eps_plain * ratio)
    half = cfg(cond_denoiser, 5.0, uncond, rescale=0.4)(x, sigma, cond)
    torch.testing.assert_close((x - half) / s, 0.4 * eps_full + 0.6 * eps_plain)
    torch.testing.assert_close(rescale_guidance(x, sigma, plain, cond_denoiser(x, sigma, cond), 1.0), full)


def test_negative_cond_replaces_uncond(inputs, counter):
    x, sigma, cond, uncond = inputs
    negative = {"y": torch.full((1, 3), 0.8, dtype=F64)}
    d = counter(cond_denoiser)
    out = cfg(d, 6.0, uncond, negative=negative)(x, sigma, cond)
    expected, _, _ = manual(x, sigma, cond, negative, 6.0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(d.calls[0][2]["y"][4:], negative["y"].expand(4, 3))
    assert not torch.allclose(out, manual(x, sigma, cond, uncond, 6.0)[0])


def test_mismatched_cond_keys_rejected(inputs):
    x, sigma, cond, _ = inputs
    with pytest.raises(ValueError, match="same keys"):
        cfg(cond_denoiser, 2.0, {"z": torch.zeros(1, 3)})(x, sigma, cond)


def test_guided_denoiser_drives_a_sampler(inputs, counter):
    """The wrapper is a denoiser: a sampler runs through it with one batched call per evaluation."""
    x, _, cond, uncond = inputs
    d = counter(cond_denoiser)
    grid = sigma_grid(6, 0.05, 10.0, "karras")
    out = sample(cfg(d, 3.0, uncond), x * 10.0, grid, "dpmpp_2m", cond=cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [b for b, _, _ in d.calls] == [8] * 6


def test_autoguidance_formula_scale_one_and_interval(inputs, counter):
    """D_bad + w (D_good - D_bad) (Karras et al. 2024, Eq. 2), both called with the same cond; at
    scale 1 the guiding model is not called; outside the interval the good model's output is kept."""
    x, sigma, cond, _ = inputs

    def bad(x, sigma, cond=None):
        return 0.5 * cond_denoiser(x, sigma, cond) + 0.1 * x

    g, b = counter(cond_denoiser), counter(bad)
    torch.testing.assert_close(Autoguidance(g, b, 1.0)(x, sigma, cond), cond_denoiser(x, sigma, cond))
    assert len(b.calls) == 0 and len(g.calls) == 1
    d_g, d_b = cond_denoiser(x, sigma, cond), bad(x, sigma, cond)
    torch.testing.assert_close(Autoguidance(cond_denoiser, bad, 2.5)(x, sigma, cond), d_b + 2.5 * (d_g - d_b))
    out = Autoguidance(cond_denoiser, bad, 2.5, interval=(0.5, 2.0))(x, sigma, cond)
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(out[inside], (d_b + 2.5 * (d_g - d_b))[inside])
    torch.testing.assert_close(out[~inside], d_g[~inside])


def test_autoguidance_of_gaussians_has_its_closed_form(gaussian_denoiser):
    """Good model N(0, 1), bad N(0, 1.5^2): the probability-flow ODE of the guided denoiser maps
    x(sigma_max) to x(sigma_min) times prod_k ((s_k^2 + sigma_min^2) / (s_k^2 + sigma_max^2))^(w_k / 2)
    with w_good = w, w_bad = 1 - w, so the samples' std is about 1.5^(1-w): w = 2 narrows them to 2/3."""
    s_good, s_bad, w, lo, hi = 1.0, 1.5, 2.0, 0.002, 80.0
    guided = Autoguidance(gaussian_denoiser(0.0, s_good), gaussian_denoiser(0.0, s_bad), w)
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None] * hi
    out = sample(guided, x, sigma_grid(400, lo, hi, "karras"), "heun")

    def factor(s, weight):
        return ((s**2 + lo**2) / (s**2 + hi**2)) ** (weight / 2)

    expected = x * factor(s_good, w) * factor(s_bad, 1 - w)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    assert float(out[-1, 0] / x[-1, 0] * hi) == pytest.approx(s_bad ** (1 - w), rel=1e-3)
