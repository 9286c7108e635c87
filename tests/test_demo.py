"""``multidiff demo``: the PNG grid and the numbers it reports."""
from __future__ import annotations

import json

from multidiff.cli import main
from multidiff.core import ODE_ORDER, SAMPLERS


def test_demo_writes_png_and_ode_samplers_improve_with_steps(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "1000", "--no-progress", "--part", "samplers"]) == 0

    png = out / "samplers.png"
    assert png.exists()
    assert 20_000 < png.stat().st_size < 10_000_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        width, height = im.size
    assert 300 < width < 4000 and height > width  # one row per sampler, plus the reference row

    printed = capsys.readouterr().out
    assert str(png) in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["samplers"]) == set(SAMPLERS)
    for name, per_steps in metrics["samplers"].items():
        assert set(per_steps) == {"5", "10", "20"}
        for m in per_steps.values():
            assert m["log_likelihood"] == m["log_likelihood"]  # not NaN
        if name in ODE_ORDER:
            rms5, rms20 = per_steps["5"]["rms_vs_reference"], per_steps["20"]["rms_vs_reference"]
            assert rms20 < rms5, (name, rms5, rms20)
            assert per_steps["20"]["log_likelihood"] > per_steps["5"]["log_likelihood"], name
        else:
            assert per_steps["5"]["rms_vs_reference"] is None
    # the reference ODE solution lands on the data distribution
    assert abs(metrics["reference_log_likelihood"] - metrics["data_log_likelihood"]) < 0.2


def test_docs_core_examples_run():
    """Every ```python block of docs/core.md runs as it stands (each in a fresh namespace)."""
    import pathlib
    import re

    import torch

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "core.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"docs/core.md block {i}", "exec"), {"__name__": f"docs_core_{i}"})
    finally:
        torch.set_num_threads(threads)
