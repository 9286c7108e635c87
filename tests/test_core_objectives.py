"""Training objectives: weightings, noise-level distributions, masks, per-sample generators."""
from __future__ import annotations

import math

import pytest
import torch

from multidiff.core import (
    EDM,
    WEIGHTINGS,
    CosineInterpolated,
    Denoiser,
    DiffusionLoss,
    LogitNormal,
    LogNormal,
    RectifiedFlow,
    UniformT,
    VPContinuous,
    VPDiscrete,
    make_generators,
    masked_mean,
    weighting,
)
from multidiff.core.utils import append_dims

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def tiny_net(seed=0):
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 6).double()

        def forward(self, x, t, cond=None):
            return torch.tanh(self.lin(x)) * torch.cos(append_dims(t.to(x.dtype), x.ndim) / 400)

    return Net()


def draws(dist, x0, seed):
    """The sigma and noise a DiffusionLoss call with generator seed ``seed`` uses."""
    g = torch.Generator().manual_seed(seed)
    sigma = dist.sample(x0.shape[0], g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return sigma, noise


@pytest.mark.parametrize("prediction,weight", [("eps", "snr"), ("v", "snr_plus_one"), ("x0", "uniform"),
                                               ("edm", "edm")])
def test_native_loss_equals_weighted_x0_loss(prediction, weight):
    """eps-MSE == 'snr' x0 MSE, v-MSE == 'snr_plus_one', x0-MSE == 'uniform', EDM F-MSE == 'edm'."""
    schedule = EDM() if prediction == "edm" else VPDiscrete()
    dist = LogNormal(-0.5, 1.5) if prediction == "edm" else UniformT(schedule)
    net = tiny_net()
    denoiser = Denoiser(net, schedule, prediction)
    x0 = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    loss = DiffusionLoss(dist, weight)(denoiser, x0, generator=torch.Generator().manual_seed(7))
    assert loss.shape == (8,)

    sigma, noise = draws(dist, x0, 7)
    x = x0 + noise * sigma.to(F64)[:, None]
    s64 = sigma.to(F64)
    if prediction == "edm":
        c_skip, c_out, c_in, c_noise = [c.to(F64) for c in (
            0.25 / (s64**2 + 0.25), s64 * 0.5 / (s64**2 + 0.25).sqrt(), 1 / (s64**2 + 0.25).sqrt(), s64.log() / 4)]
        native = (net(x * c_in[:, None], c_noise) - (x0 - c_skip[:, None] * x) / c_out[:, None]).pow(2).mean(1)
    else:
        out = net(x * schedule.alpha_from_sigma(s64)[:, None], schedule.model_time(s64))
        native = (out - denoiser.target(x0, noise, s64)).pow(2).mean(1)
    torch.testing.assert_close(loss.to(F64), native, rtol=1e-5, atol=1e-7)


def test_weighting_closed_forms():
    s = torch.tensor([0.01, 0.3, 1.0, 7.0], dtype=F64)
    torch.testing.assert_close(weighting("uniform")(s), torch.ones_like(s))
    torch.testing.assert_close(weighting("snr")(s), 1 / s**2)
    torch.testing.assert_close(weighting("snr_plus_one")(s), 1 / s**2 + 1)
    torch.testing.assert_close(weighting("min_snr", gamma=5.0)(s), torch.tensor([5.0, 5.0, 1.0, 1 / 49], dtype=F64))
    torch.testing.assert_close(weighting("soft_min_snr", gamma=5.0)(s), 1 / (s**2 + 0.2))
    torch.testing.assert_close(weighting("edm", sigma_data=0.5)(s), (s**2 + 0.25) / (0.5 * s) ** 2)
    assert set(WEIGHTINGS) == {"uniform", "snr", "snr_plus_one", "min_snr", "soft_min_snr", "edm"}


def test_lognormal_statistics():
    sigma = LogNormal(-1.2, 1.2).sample(40000, torch.Generator().manual_seed(0))
    assert sigma.shape == (40000,) and (sigma > 0).all()
    log = sigma.double().log()
    assert float(log.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(log.std()) == pytest.approx(1.2, abs=0.03)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_logit_normal_statistics(shift):
    schedule = RectifiedFlow(shift=shift)
    sigma = LogitNormal(schedule, mean=0.3, std=0.8).sample(40000, torch.Generator().manual_seed(1)).double()
    t = sigma / (1 + sigma)
    u = t / (shift - (shift - 1) * t)  # undo SD3's shift
    logit = torch.log(u / (1 - u))
    assert float(logit.mean()) == pytest.approx(0.3, abs=0.03)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.03)


def test_logit_normal_on_a_continuous_vp_schedule():
    schedule = VPContinuous("cosine")
    sigma = LogitNormal(schedule).sample(20000, torch.Generator().manual_seed(2)).double()
    t = schedule.t_of_sigma(sigma)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert float(torch.log(t / (1 - t)).mean()) == pytest.approx(0.0, abs=0.04)


def test_uniform_t_discrete_gives_integer_timesteps():
    schedule = VPDiscrete()
    sigma = UniformT(schedule).sample(20000, torch.Generator().manual_seed(3))
    t = schedule.t_of_sigma(sigma.double())
    torch.testing.assert_close(t, t.round(), rtol=0, atol=1e-3)
    t = t.round()
    assert float(t.min()) == 0 and float(t.max()) == 999
    assert float(t.mean()) == pytest.approx(499.5, abs=6.0)
    counts = torch.bincount(t.long(), minlength=1000)
    assert counts.shape == (1000,) and int(counts.max()) < 50  # no timestep favoured


def test_uniform_t_continuous():
    schedule = VPContinuous("linear_logsnr", 0.01, 100.0)
    t = schedule.t_of_sigma(UniformT(schedule).sample(20000, torch.Generator().manual_seed(4)).double())
    assert float(t.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(t.std()) == pytest.approx(math.sqrt(1 / 12), abs=0.01)
    assert not torch.allclose(t, t.round(), atol=1e-3)


def test_cosine_interpolated_equals_k_diffusion(kdiff):
    """Same uniform draws (our generator vs k-diffusion's global RNG, both float64) -> same sigmas."""
    import k_diffusion.utils as ku

    kw = dict(image_d=64, noise_d_low=32, noise_d_high=64, sigma_data=0.5)
    ours = CosineInterpolated(**kw, sigma_min=1e-3, sigma_max=1e3).sample(5000, torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = ku.rand_cosine_interpolated((5000,), **kw, min_value=1e-3, max_value=1e3, dtype=F64)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=0)


def test_loss_mask_excludes_entries():
    x0 = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(4, 1, 5)
    mask[:, :, :2] = 1

    def denoiser(garbage):
        def d(x, sigma, cond=None):
            out = x * 0.3
            return out + garbage * (1 - mask)  # changes only masked-out entries

        return d

    loss = DiffusionLoss(LogNormal(), "uniform")
    l1 = loss(denoiser(0.0), x0, generator=torch.Generator().manual_seed(6), mask=mask)
    l2 = loss(denoiser(1e3), x0, generator=torch.Generator().manual_seed(6), mask=mask)
    torch.testing.assert_close(l1, l2)
    l3 = loss(denoiser(1e3), x0, generator=torch.Generator().manual_seed(6))
    assert (l3 > l1 * 100).all()


def test_masked_mean_numbers():
    err = torch.arange(12.0).reshape(2, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    torch.testing.assert_close(masked_mean(err, mask), torch.tensor([0.5, 11.0]))
    torch.testing.assert_close(masked_mean(err, None), torch.tensor([2.5, 8.5]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        masked_mean(err, torch.ones(3))


@pytest.mark.parametrize("dist_name", ["lognormal", "uniform_t", "logit_normal", "cosine_interpolated"])
def test_per_sample_generators_make_loss_independent_of_batch(dist_name):
    dist = {"lognormal": LogNormal(), "uniform_t": UniformT(VPDiscrete()),
            "logit_normal": LogitNormal(RectifiedFlow()), "cosine_interpolated": CosineInterpolated()}[dist_name]
    net = tiny_net(1)
    denoiser = Denoiser(net, VPDiscrete(), "eps")
    loss = DiffusionLoss(dist, "snr")
    x0 = torch.randn(5, 6, generator=torch.Generator().manual_seed(8), dtype=F64)
    batch = loss(denoiser, x0, generator=make_generators(100, 5))
    for k in range(5):
        alone = loss(denoiser, x0[k:k + 1], generator=make_generators(100, 1, start=k))
        torch.testing.assert_close(alone, batch[k:k + 1], rtol=1e-6, atol=0)
    # a plain generator still gives (batch,) and differs per sample
    shared = loss(denoiser, x0, generator=torch.Generator().manual_seed(100))
    assert shared.shape == (5,) and not torch.allclose(shared, batch)
