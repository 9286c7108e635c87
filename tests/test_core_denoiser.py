"""The Denoiser wrapper: every prediction type reconstructs x0 from its exact target."""
from __future__ import annotations

import math

import pytest
import torch

from multidiff.core import EDM, PREDICTIONS, VE, Denoiser, RectifiedFlow, VPContinuous, VPDiscrete, edm_scalings

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64

SCHEDULES = {
    "vp_discrete": lambda: VPDiscrete(),
    "vp_zero_snr": lambda: VPDiscrete(1000, "scaled_linear", 0.00085, 0.012, rescale_zero_terminal_snr=True),
    "vp_continuous": lambda: VPContinuous("cosine"),
    "ve": lambda: VE(0.01, 80.0),
    "edm": lambda: EDM(),
    "flow": lambda: RectifiedFlow(),
}
# prediction -> schedules it is used with (flow velocity is defined for any differentiable path)
COMBOS = [(p, s) for p in ("eps", "x0", "v", "flow") for s in SCHEDULES] + [("edm", "edm"), ("edm", "ve")]


def sigmas_for(schedule, batch):
    """Per-sample sigmas spread over the schedule's range, off VPDiscrete's integer knots."""
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    u = torch.linspace(0.05, 0.95, batch, dtype=F64) + 0.0123
    return torch.exp(lo + u * (hi - lo))


@pytest.mark.parametrize("prediction,schedule_name", COMBOS)
def test_exact_target_reconstructs_x0(prediction, schedule_name):
    schedule = SCHEDULES[schedule_name]()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 5, generator=g, dtype=F64)
    noise = torch.randn(6, 3, 5, generator=g, dtype=F64)
    sigma = sigmas_for(schedule, 6)
    x = x0 + noise * sigma[:, None, None]
    wrapper = Denoiser(None, schedule, prediction, sigma_data=0.7)
    target = wrapper.target(x0, noise, sigma)
    seen = {}

    def model(x_in, noise_level, cond):
        seen.update(x_in=x_in, noise_level=noise_level, cond=cond)
        return target

    wrapper.model = model
    out = wrapper(x, sigma, {"label": 3})
    assert out.shape == x.shape and out.dtype == F64
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9 * (1 + float(sigma.max())))
    # what the backbone saw: its schedule's x_t and model_time (EDM: c_in x and c_noise)
    if prediction == "edm":
        _, _, c_in, c_noise = edm_scalings(sigma, 0.7)
        torch.testing.assert_close(seen["x_in"], x * c_in[:, None, None])
        torch.testing.assert_close(seen["noise_level"], c_noise)
    else:
        alpha = schedule.alpha_from_sigma(sigma)
        torch.testing.assert_close(seen["x_in"], x * alpha[:, None, None])
        torch.testing.assert_close(seen["x_in"], x0 * alpha[:, None, None] + noise * (sigma * alpha)[:, None, None])
        torch.testing.assert_close(seen["noise_level"], schedule.model_time(sigma))
    assert seen["cond"] == {"label": 3}


def test_targets_closed_forms():
    """eps -> noise, x0 -> x0, v -> alpha n - sigma_t x0, flow (rectified) -> n - x0."""
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 2.0, 30.0], dtype=F64)
    vp = VPDiscrete()
    a = (1 + sigma**2).rsqrt()[:, None]
    torch.testing.assert_close(Denoiser(None, vp, "eps").target(x0, n, sigma), n)
    torch.testing.assert_close(Denoiser(None, vp, "x0").target(x0, n, sigma), x0)
    torch.testing.assert_close(Denoiser(None, vp, "v").target(x0, n, sigma), a * n - a * sigma[:, None] * x0)
    torch.testing.assert_close(Denoiser(None, RectifiedFlow(), "flow").target(x0, n, sigma), n - x0)


def test_edm_scalings_closed_forms():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([0.5], dtype=F64), sd)
    assert float(c_skip) == pytest.approx(0.5)
    assert float(c_out) == pytest.approx(0.25 / math.sqrt(0.5))
    assert float(c_in) == pytest.approx(1 / math.sqrt(0.5))
    assert float(c_noise) == pytest.approx(math.log(0.5) / 4)
    sigma = torch.logspace(-3, 2, 11, dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.3)
    torch.testing.assert_close(c_skip, 0.09 / (sigma**2 + 0.09))
    torch.testing.assert_close(c_out, sigma * 0.3 / (sigma**2 + 0.09).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.09).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # Karras et al. 2022, App. B.6: unit-variance network input and training target for data of std sd
    x0 = torch.randn(200000, generator=torch.Generator().manual_seed(2), dtype=F64) * 0.3
    n = torch.randn(200000, generator=torch.Generator().manual_seed(3), dtype=F64)
    for s in (0.05, 1.0, 20.0):
        s_t = torch.full((1,), s, dtype=F64)
        c_skip, c_out, c_in, _ = edm_scalings(s_t, 0.3)
        assert float(((x0 + s * n) * c_in).std()) == pytest.approx(1.0, abs=0.01)
        assert float(((x0 - c_skip * (x0 + s * n)) / c_out).std()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_gradient_reaches_model_parameters(prediction):
    schedule = EDM() if prediction == "edm" else (RectifiedFlow() if prediction == "flow" else VPDiscrete())

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.emb = torch.nn.Linear(1, 4)

        def forward(self, x, t, cond=None):
            return self.lin(x) + self.emb(t[:, None].float() / 1000)

    net = Net()
    denoiser = Denoiser(net, schedule, prediction)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 9.0])
    out = denoiser(x, sigma)
    assert out.dtype == torch.float32 and out.shape == x.shape
    out.pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0, name


def test_scalar_sigma_broadcasts_and_bad_shape_rejected():
    denoiser = Denoiser(lambda x, t, c: torch.zeros_like(x), VPDiscrete(), "eps")
    x = torch.randn(3, 2)
    torch.testing.assert_close(denoiser(x, torch.tensor(0.5)), x)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        denoiser(x, torch.ones(2))
