"""The sampler benchmark's own functions on a tiny configuration (no timing assertions)."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import sys

import pytest
import torch

from multidiff.core import ODE_ORDER, SPACINGS, sample, sigma_grid

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """2-D batches: intra-op threads only cost time, a lot of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_samplers", ROOT / "benchmarks" / "samplers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_run_has_every_row_and_finite_numbers(bench, tmp_path):
    cfg = dataclasses.replace(bench.QUICK, n_eval=64, n_calib=32, reference_steps=150, opt_methods=("dpmpp_2m",),
                              opt_max_evals=20, opt_inits=("karras",), overhead_reps=2)
    result = bench.run(cfg, quick=True, log=lambda msg: None)

    assert [p["problem"] for p in result["problems"]] == ["vp", "edm"]
    for p in result["problems"]:
        rows = {(r["group"], r["method"], r["spacing"]) for r in p["rows"]}
        assert len(rows) == len(p["rows"]), "duplicate rows"
        expected = {("ours", m, s) for m in ODE_ORDER for s in SPACINGS}
        expected |= {("ours, optimised", "dpmpp_2m", "optimize_sigmas")}
        expected |= {("k-diffusion", fn + ("(eta=0)" if fn == "sample_dpmpp_3m_sde" else ""), g)
                     for fn in bench.K_SAMPLERS for g in bench.K_GRIDS}
        problem = bench.make_problem(p["problem"])
        expected |= {("diffusers", m, s) for m, s, _ in bench.diffusers_peers(problem)}
        assert rows == expected
        methods = {r["method"] for r in p["rows"] if r["group"] == "diffusers"}
        if p["problem"] == "vp":
            assert {"DDIM", "Euler", "Heun", "DPMSolverMultistep(order=2)", "DPMSolverMultistep(order=3)",
                    "UniPC(order=2)", "UniPC(order=3)"} <= methods
        for r in p["rows"]:
            for nfe in cfg.nfes:
                err = r["errors"][nfe]
                assert math.isfinite(err) and err >= 0, (r, nfe)
                assert 1 <= r["evals"][nfe] <= nfe, (r, nfe)  # no method spends more than its budget
        for nfe in cfg.nfes:  # the conclusion fields follow from the rows this run produced
            s = p["summary"][nfe]

            def best(rows, nfe=nfe):
                return min(r["errors"][nfe] for r in rows if math.isfinite(r["errors"][nfe]))

            ours = [r for r in p["rows"] if r["group"].startswith("ours")]
            fixed = [r for r in p["rows"] if r["group"] == "ours"]
            peers = [r for r in p["rows"] if not r["group"].startswith("ours")]
            assert s["ours"]["error"] == best(ours) and s["ours_fixed_spacing"]["error"] == best(fixed)
            assert s["peer"]["error"] == best(peers)
            assert s["ratio"] == pytest.approx(best(ours) / best(peers))
            assert s["ratio_fixed_spacing"] == pytest.approx(best(fixed) / best(peers))
            assert s["peer"]["label"].split(":")[0] in {"k-diffusion", "diffusers"}

    assert set(result["overhead"]) == {"euler", "dpmpp_2m", "unipc", "bare Euler loop"}
    assert all(o["ratio"] > 0 and o["evaluations"] == 10 for o in result["overhead"].values())

    report = bench.format_report(result)
    for p in result["problems"]:
        for r in p["rows"]:
            assert f"| {r['group']} | {r['method']} | {r['spacing']} |" in report
    assert "our best error / best peer's error" in report


def test_same_algorithm_same_grid_matches_peers(bench):
    """Ours, k-diffusion and diffusers agree where they run one algorithm on one grid (the table's sanity)."""
    problem = bench.make_problem("vp")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * problem.start_scale
    ours_out, _ = bench.ours("dpmpp_2m", "karras")(problem, x, 10)
    k_out, _ = bench.kdiffusion("sample_dpmpp_2m", "karras")(problem, x, 10)
    peers = {(m, s): run for m, s, run in bench.diffusers_peers(problem)}
    d_out, _ = peers[("DPMSolverMultistep(order=2)", "karras")](problem, x, 10)
    assert torch.allclose(ours_out, k_out, atol=1e-6)
    assert torch.allclose(ours_out, d_out, atol=1e-3)  # diffusers keeps its sigmas in float32


def test_optimised_grid_beats_karras_on_fresh_noise_dpmpp_2m(bench):
    cfg = dataclasses.replace(bench.QUICK, nfes=(10,), opt_max_evals=150, opt_inits=("karras",))
    problem = bench.make_problem("edm")
    x_calib = torch.randn(128, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * problem.start_scale
    x_eval = torch.randn(400, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * problem.start_scale
    ref_calib = bench.reference(problem, x_calib, 300)
    ref_eval = bench.reference(problem, x_eval, 300)
    grids, _, cost = bench.optimised_grids(problem, "dpmpp_2m", x_calib, ref_calib, cfg)

    karras = sigma_grid(10, problem.sigma_min, problem.sigma_max, "karras")
    err_karras = bench.rms(sample(problem.denoiser, x_eval, karras, "dpmpp_2m"), ref_eval)
    err_opt = bench.rms(sample(problem.denoiser, x_eval, grids[10], "dpmpp_2m"), ref_eval)
    assert len(grids[10]) == 11 and float(grids[10][-1]) == 0.0
    assert err_opt < 0.7 * err_karras, (err_opt, err_karras)
    # the calibration's cost is counted: at least the start grid's 10 calls and one Powell evaluation's 10
    assert cost["denoiser_calls"] >= 20 and cost["calibration_batch"] == 128 and cost["seconds"] > 0
