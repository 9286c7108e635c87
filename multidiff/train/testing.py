"""Helpers for tests: a tiny, fast toy config, the test device and perturbed backbone weights.

``MULTIDIFF_TEST_DEVICE`` (cpu by default, cuda on a GPU machine) picks the device the
trainer tests run on.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import Config, load_config


def device_under_test() -> str:
    return os.environ.get("MULTIDIFF_TEST_DEVICE", "cpu")


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with ``scale`` x standard normal noise (from ``seed``) added to every weight:
    zero-initialised gates and output layers make a fresh backbone the zero map, which tests nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_overrides(out_dir: str | Path, *, batch: int = 64, steps: int = 20) -> list[str]:
    """Overrides for a toy run of ``steps`` optimizer steps that takes well under a second."""
    return [
        f"trainer.out_dir={out_dir}",
        f"trainer.device={device_under_test()}",
        f"trainer.batch_size={batch}",
        f"trainer.duration_samples={batch * steps}",
        f"trainer.log_every_samples={batch}",
        "trainer.tracker=none",
        "trainer.progress=false",
        "trainer.resume=null",
        "trainer.cpu_threads=1",
        "model.params.hidden=32",
        "model.params.depth=1",
        "model.params.emb_dim=16",
        "data.params.size=4096",
        "objective.schedule.sigma_data=0.6",
        "optimizer.lr=3e-3",
        "sampling.steps=8",
        "sampling.num_samples=64",
    ]


def tiny_config(out_dir: str | Path, *extra: str, batch: int = 64, steps: int = 20) -> Config:
    return load_config(None, tiny_overrides(out_dir, batch=batch, steps=steps) + list(extra))
