"""benchmarks/backbones_video.py: the two backbones are matched in size and take the same input."""
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import backbones_video
    finally:
        sys.path.pop(0)
    return backbones_video


def test_parameter_counts_match_within_ten_percent(bench, single_thread):
    """At half the benchmark's width (fast to build): matched sizes, one input for both."""
    theirs = bench.diffusers_unet3d(width=32)
    target = bench.n_params(theirs)
    ours = bench.matched_ours(target)
    assert abs(bench.n_params(ours) / target - 1) < 0.1 and ours.scale > 0
    x = torch.randn(1, bench.CHANNELS, 2, 16, 16)
    ctx = torch.randn(1, bench.CONTEXT_TOKENS, bench.CONTEXT_DIM)
    t = torch.rand(1)
    with torch.no_grad():
        for kind, model in (("diffusers", theirs), ("ours", ours)):
            assert torch.isfinite(bench._loss(kind, model, x, t, ctx))


def test_markdown_table(bench):
    rows = []
    for kind, sps, mem in (("diffusers", 1.0, 100.0), ("ours", 1.5, 90.0)):
        for frames, scale in ((16, 1.0), (32, 2.0)):
            rows.append({"model": kind, "params_M": 1.0, "input": f"1x4x{frames}x32x32", "frames": frames,
                         "samples_per_s": sps / scale, "peak_MB": mem * scale, "device": "cpu",
                         "gflops_4_frames": 2.0})
    for r in rows:
        r["throughput_ratio"] = r["samples_per_s"] / next(q for q in rows if q["model"] == "diffusers"
                                                         and q["frames"] == r["frames"])["samples_per_s"]
        r["memory_32_over_16"] = 2.0
    table = bench.markdown(rows)
    assert table.count("\n| ours |") == 2 and "throughput at 16 frames = 1.50" in table


def test_same_attention_resolutions_and_flops_are_counted(bench, single_thread):
    """Ours attends where diffusers' UNet3DConditionModel does (its CrossAttn levels: the two finest)."""
    theirs = bench.diffusers_unet3d(width=32)
    kinds = [type(b).__name__ for b in theirs.down_blocks]
    assert kinds == ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"]
    ours = bench.ours_unet3d(0.5)
    assert tuple(ours.config.spatial_attention_levels) == (0, 1) == tuple(ours.config.temporal_attention_levels)
    assert bench.flops_per_sample("ours", 0.25) > 0
