"""Shared fixtures for the test suite (small tensors, CPU, no downloads)."""
from __future__ import annotations

import warnings

import pytest
import torch


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in float64."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for tiny tensors: on a shared 2-core machine torch's thread pool
    costs far more than it gains (10x slower under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rel_err():
    return _rel_err


def _fake_eps(x: torch.Tensor, t, cond=None) -> torch.Tensor:
    """A deterministic nonlinear 'eps model' of its input and timestep (any rank, scalar or (batch,) t)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 1:
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(0.5 * x) * torch.cos(t / 300) + 0.1 * x


@pytest.fixture
def fake_eps():
    return _fake_eps


class CallCounter(torch.nn.Module):
    """Wraps a denoiser and records (batch size, sigma, cond) of every call."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.calls: list[tuple[int, torch.Tensor, object]] = []

    def forward(self, x, sigma, cond=None):
        self.calls.append((x.shape[0], sigma.detach().clone(), cond))
        return self.denoiser(x, sigma, cond)


@pytest.fixture
def counter():
    return CallCounter


def _gaussian_denoiser(mean: float, std: float):
    """Exact denoiser of N(mean, std^2 I): D = mean + std^2 / (std^2 + sigma^2) (x - mean)."""

    def denoiser(x, sigma, cond=None):
        s2 = sigma.to(torch.float64).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (mean + std**2 / (std**2 + s2) * (x.to(torch.float64) - mean)).to(x.dtype)

    return denoiser


@pytest.fixture
def gaussian_denoiser():
    return _gaussian_denoiser


@pytest.fixture(scope="session")
def kdiff():
    """k_diffusion.sampling, imported with its import-time warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("k_diffusion")
        import k_diffusion.sampling
    return k_diffusion.sampling
