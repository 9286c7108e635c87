"""Sampler accuracy and overhead against diffusers and k-diffusion, on an exact denoiser.

    .venv/bin/python benchmarks/samplers.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/samplers.py --quick    # smaller batches, fewer grid optimisations

Accuracy. The data is the 2-D Gaussian mixture of ``multidiff.toy.two_d_mixture`` and the
denoiser is its exact posterior mean, so the only error left is the solver's. Every
method starts from the same sigma-space point x_T (one batch of evaluation noise) and
is scored by the RMS distance of its final sample to a 1000-step Heun (Karras grid)
solution of the probability-flow ODE from that same x_T, at a budget of 5, 10 and 20
denoiser evaluations (``steps_for_evaluations`` gives Heun 2n - 1 and midpoint 2n
evaluations their fair step counts). Two problems, because a discrete VP scheduler's
sigma range is fixed by its betas:

  vp   sigma in [0.0100, 157.4], the range of diffusers' default linear betas
       (1e-4 .. 0.02, 1000 steps); x_T = noise * sqrt(1 + sigma_max^2), i.e. standard
       normal VP noise. Ours, diffusers (DDIM, Euler, Heun, DPM-Solver++ 2M/3M,
       UniPC 2/3 with their spacing options) and k-diffusion.
  edm  sigma in [0.002, 80] (EDM); x_T = noise * 80. Ours, k-diffusion and diffusers'
       EDM schedulers (EDMEuler, EDMDPMSolverMultistep 2/3).

"ours, optimised" rows use ``optimize_sigmas``, calibrated on a separate calibration
batch of noise and scored on the evaluation batch.

Overhead. Wall time of ``sample()`` with a small MLP denoiser divided by
(evaluations x time of one denoiser call); medians of interleaved repeats.

Writes benchmarks/results/samplers.md and samplers.json (``--quick``: samplers_quick.*).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from multidiff.core import (
    ODE_ORDER,
    SPACINGS,
    VPContinuous,
    VPDiscrete,
    optimize_sigmas,
    sample,
    sigma_grid,
    steps_for_evaluations,
)
from multidiff.toy import two_d_mixture

NFES = (5, 10, 20)
HERE = os.path.dirname(os.path.abspath(__file__))

# ddim, euler and flow_euler take identical steps on any grid (first-order exponential
# integrator), so one optimised grid serves all three.
SAME_AS_EULER = ("ddim", "flow_euler")
OPTIMIZABLE = tuple(m for m in ODE_ORDER if m not in SAME_AS_EULER)


@dataclass
class Config:
    n_eval: int = 2000            # evaluation batch (fresh noise)
    n_calib: int = 500            # calibration batch for optimize_sigmas (separate noise)
    reference_steps: int = 1000   # Heun steps of the reference solution (Karras grid)
    problems: tuple = ("vp", "edm")
    nfes: tuple = NFES
    opt_methods: tuple = OPTIMIZABLE
    opt_max_evals: int = 600      # Powell evaluations per optimised grid
    opt_inits: tuple = ("karras", "loglinear", "trailing")  # start grid: the one best on the calibration batch
    peers: bool = True
    overhead_methods: tuple = ("euler", "dpmpp_2m", "unipc")
    overhead_steps: int = 10
    overhead_reps: int = 60
    seed: int = 0


FULL = Config()
QUICK = Config(n_eval=500, n_calib=200, reference_steps=500, opt_methods=("dpmpp_2m", "dpmpp_3m", "unipc"),
               opt_max_evals=150)


# --------------------------------------------------------------------------- problems
@dataclass
class Problem:
    name: str
    sigma_min: float
    sigma_max: float
    start_scale: float      # x_T = noise * start_scale (sigma space)
    schedule: object        # for the linear_t / trailing spacings
    schedule_note: str
    denoiser: torch.nn.Module = field(default_factory=two_d_mixture)


def make_problem(name: str) -> Problem:
    if name == "vp":
        vp = VPDiscrete(1000, "linear", 1e-4, 0.02)
        return Problem("vp", vp.sigma_min, vp.sigma_max, math.sqrt(1 + vp.sigma_max**2), vp,
                       "VPDiscrete(linear betas 1e-4..0.02), the diffusers schedulers' own")
    if name == "edm":
        return Problem("edm", 0.002, 80.0, 80.0, VPContinuous("cosine", 0.002, 80.0),
                       "VPContinuous('cosine', 0.002, 80)")
    raise ValueError(f"unknown problem {name!r}; known: vp, edm")


class Counted:
    """Counts denoiser calls so every row reports the evaluations it really spent."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS over samples of the Euclidean distance to the reference."""
    return float(((x.double() - ref.double()) ** 2).sum(-1).mean().sqrt())


def reference(problem: Problem, x_start: torch.Tensor, steps: int) -> torch.Tensor:
    grid = sigma_grid(steps, problem.sigma_min, problem.sigma_max, "karras")
    return sample(problem.denoiser, x_start, grid, "heun")


# ---------------------------------------------------------------------------- runners
# A runner maps (problem, x_start, nfe) -> (final sample, evaluations spent).
Runner = Callable[[Problem, torch.Tensor, int], tuple]


def ours(method: str, spacing: str) -> Runner:
    def run(problem, x_start, nfe):
        n = steps_for_evaluations(method, nfe)
        grid = sigma_grid(n, problem.sigma_min, problem.sigma_max, spacing, schedule=problem.schedule)
        den = Counted(problem.denoiser)
        return sample(den, x_start, grid, method), den.calls
    return run


def ours_with_grid(method: str, grids: dict) -> Runner:
    def run(problem, x_start, nfe):
        den = Counted(problem.denoiser)
        return sample(den, x_start, grids[nfe], method), den.calls
    return run


def _kdiffusion():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import k_diffusion.sampling as K
    return K


K_SAMPLERS = ("sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_dpmpp_3m_sde", "sample_lms")
K_GRIDS = {"karras": {}, "exponential": {}, "polyexponential(rho=0.5)": {"rho": 0.5},
           "polyexponential(rho=2)": {"rho": 2.0}}  # rho = 1 is exponential


def kdiffusion(fn_name: str, grid_name: str) -> Runner:
    def run(problem, x_start, nfe):
        K = _kdiffusion()
        n = steps_for_evaluations("heun" if fn_name == "sample_heun" else "euler", nfe)
        make = {"karras": K.get_sigmas_karras, "exponential": K.get_sigmas_exponential}.get(
            grid_name, K.get_sigmas_polyexponential)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # k-diffusion builds its grids in the default dtype
        try:
            sigmas = make(n, problem.sigma_min, problem.sigma_max, **K_GRIDS[grid_name]).double()
        finally:
            torch.set_default_dtype(default)
        den = Counted(problem.denoiser)

        def model(x, sigma, **_):
            return den(x, sigma)

        opts = {"disable": True}
        if fn_name == "sample_dpmpp_3m_sde":  # eta = 0: the ODE solver, no Brownian tree needed
            opts.update(eta=0.0, noise_sampler=lambda s, t: torch.zeros_like(x_start))
        out = getattr(K, fn_name)(model, x_start.clone(), sigmas, **opts)
        return out, den.calls
    return run


def _diffusers_level(sched, i: int, t) -> float:
    """The sigma-space noise level the scheduler's update assumes at loop index i."""
    if hasattr(sched, "sigmas") and not type(sched).__name__.startswith("DDIM"):
        return float(sched.sigmas[i])
    abar = float(sched.alphas_cumprod[int(t)])
    return math.sqrt((1 - abar) / abar)


def diffusers_run(make_scheduler: Callable) -> Runner:
    """Drive a diffusers scheduler with the exact denoiser at the scheduler's own sigmas.

    The denoiser is evaluated at exactly the sigma each step's update assumes (the
    scheduler's ``sigmas`` entry, not a rounded integer timestep), and x is converted
    between the scheduler's space (VP x_t, or sigma space for Euler/Heun/EDM) and ours.
    """
    def run(problem, x_start, nfe):
        sched = make_scheduler()
        name = type(sched).__name__
        n = steps_for_evaluations("heun" if name.startswith("Heun") else "euler", nfe)
        sched.set_timesteps(n)
        sigma_space = name.startswith(("Euler", "Heun", "EDM"))
        s0 = _diffusers_level(sched, 0, sched.timesteps[0])
        if abs(s0 / problem.sigma_max - 1) > 1e-5:
            raise ValueError(f"{name} starts at sigma {s0:.6g}, not at the problem's {problem.sigma_max:.6g}")
        x = x_start.clone() if sigma_space else x_start / math.sqrt(1 + s0**2)
        den = Counted(problem.denoiser)
        for i, t in enumerate(sched.timesteps):
            sigma = _diffusers_level(sched, i, t)
            x_sigma = x if sigma_space else x * math.sqrt(1 + sigma**2)
            d = den(x_sigma, torch.full((x.shape[0],), sigma, dtype=x.dtype))
            if name.startswith("EDM"):  # EDM preconditioning: denoised = c_skip x + c_out F
                sd = sched.config.sigma_data
                c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2)
                out = (d - c_skip * x_sigma) / c_out
            else:  # epsilon prediction
                out = (x_sigma - d) / sigma
            sched.scale_model_input(x, t)
            x = sched.step(out, t, x).prev_sample
        return x, den.calls  # at sigma = 0 every space coincides with sigma space
    return run


def diffusers_peers(problem: Problem) -> list:
    """(method, spacing, runner) for the diffusers schedulers and their spacing options."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import diffusers
    rows = []
    if problem.name == "edm":
        for spacing in ("karras", "exponential"):
            rows.append(("EDMEuler", spacing, lambda s=spacing: diffusers.EDMEulerScheduler(sigma_schedule=s)))
        for order in (2, 3):
            for spacing in ("karras", "exponential"):
                rows.append((f"EDMDPMSolverMultistep(order={order})", spacing,
                             lambda s=spacing, o=order: diffusers.EDMDPMSolverMultistepScheduler(
                                 sigma_schedule=s, solver_order=o)))
        return [(m, s, diffusers_run(f)) for m, s, f in rows]
    betas = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    # "leading" spacing is left out: it starts below sigma_max (t = 900 of 999 at 10 steps).
    spacing_opts = {"linspace": {"timestep_spacing": "linspace"}, "trailing": {"timestep_spacing": "trailing"},
                    "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
                    "beta": {"use_beta_sigmas": True}}
    table = [
        ("DDIM", diffusers.DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": True}, ("linspace", "trailing")),
        ("Euler", diffusers.EulerDiscreteScheduler, {}, tuple(spacing_opts)),
        ("Heun", diffusers.HeunDiscreteScheduler, {}, tuple(spacing_opts)),
    ]
    for order in (2, 3):
        table.append((f"DPMSolverMultistep(order={order})", diffusers.DPMSolverMultistepScheduler,
                      {"solver_order": order}, tuple(spacing_opts) + ("lu_lambdas",)))
    # solver_type="bh1" is left out: with final_sigmas_type="zero" its last step returns NaN
    # (B(h) = h is infinite at sigma = 0), and "sigma_min" stops short of sigma = 0.
    for order in (2, 3):
        table.append((f"UniPC(order={order})", diffusers.UniPCMultistepScheduler,
                      {"solver_order": order, "solver_type": "bh2"}, tuple(spacing_opts)))
    spacing_opts["lu_lambdas"] = {"use_lu_lambdas": True}
    for method, cls, opts, spacings in table:
        for spacing in spacings:
            kw = {**betas, **opts, **spacing_opts[spacing]}
            rows.append((method, spacing, lambda c=cls, k=kw: c(**k)))
    return [(m, s, diffusers_run(f)) for m, s, f in rows]


# ------------------------------------------------------------------------------ benchmark
def optimised_grids(problem: Problem, method: str, x_calib, ref_calib, cfg: Config) -> tuple:
    """Grids from optimize_sigmas for each NFE, calibrated on x_calib only.

    The start grid (``init=``) is the spacing with the lowest calibration error among
    cfg.opt_inits (linear_t / trailing over the problem's schedule).
    """
    grids, inits = {}, {}
    calls = [0]

    def counted(*args, **kwargs):  # the calibration's cost, in denoiser calls on the calibration batch
        calls[0] += 1
        return problem.denoiser(*args, **kwargs)

    t0 = time.perf_counter()
    for nfe in cfg.nfes:
        n = steps_for_evaluations(method, nfe)
        starts = {sp: sigma_grid(n, problem.sigma_min, problem.sigma_max, sp, schedule=problem.schedule)
                  for sp in cfg.opt_inits}
        init = min(cfg.opt_inits, key=lambda sp: rms(sample(counted, x_calib, starts[sp], method), ref_calib))
        grids[nfe] = optimize_sigmas(counted, x_calib, n, method, sigma_min=problem.sigma_min,
                                     sigma_max=problem.sigma_max, reference=ref_calib, init=starts[init],
                                     max_evals=cfg.opt_max_evals)
        inits[nfe] = init
    cost = {"seconds": time.perf_counter() - t0, "denoiser_calls": calls[0], "calibration_batch": len(x_calib),
            "nfes": list(cfg.nfes)}
    return grids, inits, cost


def run_problem(name: str, cfg: Config, log=print) -> dict:
    problem = make_problem(name)
    gen_eval = torch.Generator().manual_seed(cfg.seed)
    gen_calib = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # a separate calibration batch
    x_eval = torch.randn(cfg.n_eval, 2, generator=gen_eval, dtype=torch.float64) * problem.start_scale
    x_calib = torch.randn(cfg.n_calib, 2, generator=gen_calib, dtype=torch.float64) * problem.start_scale
    t0 = time.perf_counter()
    ref_eval = reference(problem, x_eval, cfg.reference_steps)
    ref_calib = reference(problem, x_calib, cfg.reference_steps)
    log(f"[{name}] references ({cfg.reference_steps} Heun steps): {time.perf_counter() - t0:.1f}s")

    rows = []

    def add(group, method, spacing, runner, note=""):
        errors, evals = {}, {}
        for nfe in cfg.nfes:
            out, spent = runner(problem, x_eval, nfe)
            errors[nfe], evals[nfe] = rms(out, ref_eval), spent
        rows.append({"group": group, "method": method, "spacing": spacing, "errors": errors, "evals": evals,
                     "note": note})

    t0 = time.perf_counter()
    for method in ODE_ORDER:
        for spacing in SPACINGS:
            add("ours", method, spacing, ours(method, spacing))
    log(f"[{name}] ours, fixed spacings: {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    grids, calibration = {}, {}
    for method in cfg.opt_methods:
        grids[method], inits, calibration[method] = optimised_grids(problem, method, x_calib, ref_calib, cfg)
        note = "start: " + ", ".join(f"{nfe}:{inits[nfe]}" for nfe in cfg.nfes)
        add("ours, optimised", method, "optimize_sigmas", ours_with_grid(method, grids[method]), note)
        if method == "euler":
            for same in SAME_AS_EULER:
                add("ours, optimised", same, "optimize_sigmas", ours_with_grid(same, grids[method]),
                    "euler's grid (same steps)")
    log(f"[{name}] ours, optimised grids ({len(cfg.opt_methods)} samplers x {len(cfg.nfes)} NFE, "
        f"max_evals={cfg.opt_max_evals}): {time.perf_counter() - t0:.1f}s")

    if cfg.peers:
        t0 = time.perf_counter()
        for fn_name in K_SAMPLERS:
            for grid_name in K_GRIDS:
                label = fn_name + ("(eta=0)" if fn_name == "sample_dpmpp_3m_sde" else "")
                add("k-diffusion", label, grid_name, kdiffusion(fn_name, grid_name))
        log(f"[{name}] k-diffusion: {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        for method, spacing, runner in diffusers_peers(problem):
            add("diffusers", method, spacing, runner)
        log(f"[{name}] diffusers: {time.perf_counter() - t0:.1f}s")

    return {"problem": name, "sigma_min": problem.sigma_min, "sigma_max": problem.sigma_max,
            "start_scale": problem.start_scale, "schedule_for_linear_t": problem.schedule_note,
            "rows": rows, "summary": summarize(rows, cfg.nfes), "calibration": calibration,
            "grids": {m: {nfe: g.tolist() for nfe, g in gs.items()} for m, gs in grids.items()}}


def summarize(rows: list, nfes=NFES) -> dict:
    """Per NFE: our best row (with and without optimised grids), the best peer, their ratio."""
    out = {}
    for nfe in nfes:
        def best(pred, nfe=nfe):
            cands = [r for r in rows if pred(r) and math.isfinite(r["errors"][nfe])]
            if not cands:
                return None
            r = min(cands, key=lambda r: r["errors"][nfe])
            return {"label": f"{r['group']}: {r['method']} / {r['spacing']}", "error": r["errors"][nfe]}

        ours_best = best(lambda r: r["group"].startswith("ours"))
        fixed_best = best(lambda r: r["group"] == "ours")
        tuned_best = best(lambda r: r["group"] == "ours, optimised")
        peer_best = best(lambda r: not r["group"].startswith("ours"))
        entry = {"ours": ours_best, "ours_fixed_spacing": fixed_best, "ours_tuned": tuned_best, "peer": peer_best}
        if ours_best and peer_best:
            entry["ratio"] = ours_best["error"] / peer_best["error"]
            entry["ratio_fixed_spacing"] = fixed_best["error"] / peer_best["error"]
        out[nfe] = entry
    return out


# ------------------------------------------------------------------------------ overhead
class MLPDenoiser(torch.nn.Module):
    """A small denoiser: 3 hidden layers of 256 (SiLU) on (x * c_in, log(sigma) / 4), EDM-style skip."""

    def __init__(self, dim: int = 2, width: int = 256, sigma_data: float = 0.5):
        super().__init__()
        self.sigma_data = sigma_data
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, dim))

    def forward(self, x, sigma, cond=None):
        s = sigma[:, None]
        v = s**2 + self.sigma_data**2
        h = torch.cat([x * v.rsqrt(), s.log() / 4], dim=1)
        return x * (self.sigma_data**2 / v) + self.net(h) * (s * self.sigma_data * v.rsqrt())


@torch.no_grad()
def measure_overhead(methods=("euler", "dpmpp_2m", "unipc"), n_steps: int = 10, reps: int = 40,
                     batch: int = 64, seed: int = 0) -> dict:
    """Median over interleaved repeats of time(sample()) / time(the same denoiser calls on their own).

    The denominator replays exactly the (x, sigma) inputs the sampler gave the denoiser
    (recorded in a first run), so the ratio is the loop's own cost and not a difference
    in the denoiser's cost at other noise levels.
    """
    torch.manual_seed(seed)
    den = MLPDenoiser().eval()
    x = torch.randn(batch, 2) * 80
    grid = sigma_grid(n_steps, 0.002, 80.0, "karras")
    levels = grid.tolist()
    level_tensors = [torch.full((batch,), v, dtype=x.dtype) for v in levels]

    def bare_euler(denoiser):  # the floor: Euler's arithmetic, no checks, sigma tensors made in advance
        y = x
        for i in range(n_steps):
            y = y + (y - denoiser(y, level_tensors[i])) * ((levels[i + 1] - levels[i]) / levels[i])
        return y

    for _ in range(20):  # warm up
        den(x, level_tensors[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: steadier timings on a shared machine
    try:
        return _overhead_ratios(methods, den, x, grid, bare_euler, reps)
    finally:
        torch.set_num_threads(threads)


def _overhead_ratios(methods, den, x, grid, bare_euler, reps) -> dict:
    out = {}
    for method in tuple(methods) + ("bare Euler loop",):
        def run_once(denoiser, m=method):
            return bare_euler(denoiser) if m == "bare Euler loop" else sample(denoiser, x, grid, m)

        calls = []

        def recorder(xi, si, cond=None, calls=calls):
            calls.append((xi.clone(), si.clone()))
            return den(xi, si, cond)

        run_once(recorder)
        ratios, call_times, sample_times = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            for xi, si in calls:
                den(xi, si)
            t_calls = time.perf_counter() - t
            t = time.perf_counter()
            run_once(den)
            t_sample = time.perf_counter() - t
            ratios.append(t_sample / t_calls)
            call_times.append(t_calls)
            sample_times.append(t_sample)
        out[method] = {"ratio": statistics.median(ratios), "ratio_of_best": min(sample_times) / min(call_times),
                       "evaluations": len(calls), "call_us": 1e6 * statistics.median(call_times) / len(calls)}
    return out


# ---------------------------------------------------------------------------------- output
def _fmt(v: float) -> str:
    return f"{v:.2e}" if math.isfinite(v) else "nan"


def format_problem(result: dict) -> str:
    nfes = list(result["rows"][0]["errors"])
    lines = [f"### Problem `{result['problem']}`: sigma in [{result['sigma_min']:.4g}, {result['sigma_max']:.4g}], "
             f"x_T = noise * {result['start_scale']:.4g}", "",
             "RMS distance of the final sample to the 1000-step Heun reference (lower is better). "
             f"linear_t / trailing use {result['schedule_for_linear_t']}.", "",
             "| group | method | spacing | " + " | ".join(f"NFE {n}" for n in nfes) + " | note |",
             "|---|---|---|" + "---:|" * len(nfes) + "---|"]
    for r in result["rows"]:
        cells = []
        for n in nfes:
            c = _fmt(r["errors"][n])
            if r["evals"][n] != n:
                c += f" ({r['evals'][n]})"
            cells.append(c)
        lines.append(f"| {r['group']} | {r['method']} | {r['spacing']} | " + " | ".join(cells) + f" | {r['note']} |")
    lines += ["", "(k) after a number: the evaluations actually spent, where a method's step structure cannot "
              "use the budget exactly (Heun 2n - 1, midpoint 2n).", ""]
    lines += summary_lines(result)
    return "\n".join(lines)


def summary_lines(result: dict) -> list:
    out = []
    for nfe, s in result["summary"].items():
        if "ratio" not in s:
            continue
        out.append(f"- {result['problem']}, NFE {nfe}: ours best {_fmt(s['ours']['error'])} ({s['ours']['label']}); "
                   f"best peer {_fmt(s['peer']['error'])} ({s['peer']['label']}); ratio {s['ratio']:.3f}; "
                   f"fixed spacings only: {_fmt(s['ours_fixed_spacing']['error'])} "
                   f"({s['ours_fixed_spacing']['label']}), ratio {s['ratio_fixed_spacing']:.3f}")
    return out


def format_overhead(overhead: dict, n_steps: int) -> str:
    lines = [f"### Sampler loop overhead (MLP denoiser 3 x 256, batch 64, {n_steps} steps, float32, CPU, 1 thread)", "",
             "time(sample()) / (evaluations x time(one denoiser call)), median of interleaved repeats "
             "(target < 1.05). 'bare Euler loop' is the floor: a hand-written loop with Euler's arithmetic, "
             "no checks and the sigma tensors made in advance. 'best/best' divides the fastest sample() by the "
             "fastest replay of its calls (less sensitive to other load on the machine).", "",
             "| sampler | evaluations | one call (us) | ratio (median) | best/best |", "|---|---:|---:|---:|---:|"]
    for m, o in overhead.items():
        lines.append(f"| {m} | {o['evaluations']} | {o['call_us']:.0f} | {o['ratio']:.3f} | {o['ratio_of_best']:.3f} |")
    return "\n".join(lines)


def format_report(result: dict) -> str:
    cfg = result["config"]
    parts = [f"## Sampler benchmark ({'quick' if result['quick'] else 'full'})", "",
             f"Evaluation batch {cfg['n_eval']}, separate calibration batch {cfg['n_calib']} for optimize_sigmas "
             f"(max_evals={cfg['opt_max_evals']}), reference {cfg['reference_steps']} Heun steps (Karras); "
             f"torch {torch.__version__}; run time {result['seconds']:.0f}s.", ""]
    headline = [s for p in result["problems"] for s in [p["summary"].get(10)] if s and "ratio" in s]
    for p in result["problems"]:
        s = p["summary"].get(10)
        if s and "ratio" in s:  # like for like first: fixed grids, ours against the peers' best
            parts.append(f"**Summary ({p['problem']}), fixed grids: at 10 evaluations, our best error / best "
                         f"peer's error = {s['ratio_fixed_spacing']:.3f}** ({_fmt(s['ours_fixed_spacing']['error'])}, "
                         f"{s['ours_fixed_spacing']['label']}, vs {_fmt(s['peer']['error'])}, {s['peer']['label']}).")
    if headline:
        parts.append("")
    for p in result["problems"]:
        s, cost = p["summary"].get(10), p.get("calibration") or {}
        if s and "ratio" in s and cost and s.get("ours_tuned"):
            seconds = sum(c["seconds"] for c in cost.values())
            calls = sum(c["denoiser_calls"] for c in cost.values())
            batch = next(iter(cost.values()))["calibration_batch"]
            tuned = s["ours_tuned"]
            parts.append(f"Tuned grids, reported apart ({p['problem']}): the best `optimize_sigmas` row gives "
                         f"{_fmt(tuned['error'])} ({tuned['label']}), {tuned['error'] / s['peer']['error']:.3f} of the "
                         f"best peer, at a calibration cost (choosing the start grid included) of "
                         f"{calls:,} denoiser calls on a {batch}-sample calibration batch and {seconds:.0f} s for "
                         f"{len(cost)} samplers x {len(next(iter(cost.values()))['nfes'])} budgets (the peers' grids "
                         f"are not tuned).")
    if headline:
        parts.append("")
    for p in result["problems"]:
        parts += [format_problem(p), ""]
    if result.get("overhead"):
        parts += [format_overhead(result["overhead"], cfg["overhead_steps"]), ""]
    parts += ["Notes: k-diffusion's sample_dpm_adaptive is left out (its evaluations are set by tolerances, not a "
              "budget); diffusers' 'leading' timestep spacing is left out (it does not start at sigma_max); "
              "DDIM runs with clip_sample=False. ddim, euler and flow_euler take identical steps on any grid.", ""]
    return "\n".join(parts)


def run(cfg: Config, quick: bool = False, log=print, overhead: bool = True) -> dict:
    """Run every problem in cfg (and the overhead measurement); returns a JSON-ready dict."""
    t0 = time.perf_counter()
    result = {"quick": quick, "config": dataclasses.asdict(cfg), "problems": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D batches gain nothing from intra-op threads, and lose a lot on a busy machine
    try:
        for name in cfg.problems:
            result["problems"].append(run_problem(name, cfg, log=log))
    finally:
        torch.set_num_threads(threads)
    if overhead and cfg.overhead_methods:
        t1 = time.perf_counter()
        result["overhead"] = measure_overhead(cfg.overhead_methods, cfg.overhead_steps, cfg.overhead_reps,
                                              seed=cfg.seed)
        log(f"overhead: {time.perf_counter() - t1:.1f}s")
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer grid optimisations (~30 s)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for samplers[_quick].md/.json")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = run(cfg, quick=args.quick, log=log)
    report = format_report(result)
    print(report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "samplers_quick" if args.quick else "samplers")
    with open(stem + ".md", "w") as f:
        f.write(report)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=float)
    log(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
