"""benchmarks/latent_sampling.py on its smoke setting: the recipes' models build, the latent shapes
follow from the autoencoders, sampling decodes back to the source shape (no timing assertions)."""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_covers_both_modalities_and_decodes_to_the_source_shape(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("latent_sampling", ROOT / "benchmarks" / "latent_sampling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "latent_sampling_cpu_quick.json").read_text())
    shapes = {(r["modality"], r["kind"]): r["diffused_shape"] for r in rows}
    # Oobleck light: hop 128, 8 latent channels; the frame VAE light: 4x down-sampling, 4 channels
    assert shapes == {("audio", "waveform"): [1, 64000], ("audio", "latent"): [8, 2000],
                      ("video", "pixel"): [1, 12, 32, 32], ("video", "latent"): [4, 12, 16, 16]}
    for r in rows:
        assert r["steps"] == 2 and math.isfinite(r["per_unit"]) and r["per_unit"] > 0
        assert r["train_batch"] == 1 and math.isfinite(r["train_samples_per_s"]) and r["train_samples_per_s"] > 0
    audio = {r["kind"]: r for r in rows if r["modality"] == "audio"}
    assert audio["latent"]["per_unit"] == audio["latent"]["seconds_per_sample"] / 16.0
    assert "| video | latent | 1x12x64x64 | 4x12x16x16 |" in capsys.readouterr().out
    assert all(r["decode_seconds_per_sample"] > 0 for r in rows if r["kind"] == "latent")
