"""diffusers pipelines (multidiff/pipelines): save / load round trips with identical samples, guidance,
diffusers schedulers, outputs that write files, export from trained checkpoints, and errors."""
import math
from functools import partial

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

from multidiff.audio.io import load_audio, save_audio
from multidiff.audio.unet1d import unet1d_tiny
from multidiff.cli import main
from multidiff.core import ClassifierFreeGuidance, make_generators, sample
from multidiff.manifest import write_manifest
from multidiff.pipelines import (
    AudioDiffusionPipeline,
    MultidiffPipeline,
    MultidiffSchedulerConfig,
    PointCloudDiffusionPipeline,
    VideoDiffusionPipeline,
    export_pipeline,
)
from multidiff.shapes.io import load_ply_points
from multidiff.shapes.transformer import latent_tiny
from multidiff.train import Trainer, load_config
from multidiff.train.checkpoint import read_module_state, resolve
from multidiff.train.testing import perturbed, tiny_config
from multidiff.video.io import read_video
from multidiff.video.unet3d import unet3d_tiny

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", autouse=True)
def no_loading_bars():
    diffusers_logging.disable_progress_bar()
    yield
    diffusers_logging.enable_progress_bar()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduler(shape, **kw):
    return MultidiffSchedulerConfig(**{"schedule": {"name": "edm", "sigma_data": 0.5}, "prediction": "edm",
                                       "sample_shape": list(shape), "num_classes": 3, "num_inference_steps": 3,
                                       "class_names": ["low", "mid", "high"], **kw})


def audio_pipe(num_classes=3):
    unet = unet1d_tiny(num_classes=num_classes, channels=(8, 16), factors=(4,), emb_dim=32, attention_heads=2)
    names = ["low", "mid", "high"] if num_classes == 3 else None
    return _quiet(AudioDiffusionPipeline(perturbed(unet), _scheduler((1, 32), sample_rate=8000, num_classes=num_classes,
                                                                      class_names=names)))


def video_pipe():
    unet = unet3d_tiny(num_classes=3, channels=(8, 16), emb_dim=32, attention_heads=2)
    return _quiet(VideoDiffusionPipeline(perturbed(unet), _scheduler((1, 3, 8, 8), fps=4.0)))


def shapes_pipe():
    model = latent_tiny(num_classes=3, dim=16, depth=1, heads=2, num_latents=4, fourier_features=4)
    return _quiet(PointCloudDiffusionPipeline(perturbed(model), _scheduler((16, 3))))


PIPES = {"audio": audio_pipe, "video": video_pipe, "shapes": shapes_pipe}


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _samples(pipe, seed=7, labels=(0, 2), start=0, **kw):
    return pipe(class_labels=list(labels), generator=make_generators(seed, len(labels), start=start),
                return_dict=False, **kw)[0]


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", PIPES)
def test_save_load_round_trip_gives_identical_samples(kind, tmp_path):
    pipe = PIPES[kind]()
    ref = _samples(pipe)
    assert ref.shape == (2, *pipe.scheduler.config.sample_shape) and torch.isfinite(ref).all()
    pipe.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    name = pipe.backbone_name
    assert files == {"model_index.json", "multidiff_pipeline.py", "scheduler/scheduler_config.json", "README.md",
                     f"{name}/config.json", f"{name}/diffusion_pytorch_model.safetensors"}  # JSON + safetensors only
    loaders = [type(pipe).from_pretrained, MultidiffPipeline.from_pretrained,
               partial(DiffusionPipeline.from_pretrained, trust_remote_code=True)]
    for load in loaders:
        loaded = _quiet(load(tmp_path))
        assert type(loaded) is type(pipe)
        assert _public(loaded.scheduler.config) == _public(pipe.scheduler.config)
        assert torch.equal(_samples(loaded), ref)
    # a loaded pipeline saves and loads again the same way
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(_samples(_quiet(type(pipe).from_pretrained(tmp_path / "again"))), ref)


def test_per_sample_generators_make_samples_independent_of_the_batch():
    pipe = audio_pipe()
    for sampler in ("dpmpp_2m", "euler_ancestral"):
        batch = _samples(pipe, seed=3, labels=(0, 1, 2), sampler=sampler)
        alone = _samples(pipe, seed=3, labels=(1,), start=1, sampler=sampler)  # sample 1 of seed 3
        torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-6)
    # one generator for the whole batch: reproducible, and labels by name
    a = pipe(class_labels="high", num_samples=2, generator=torch.Generator().manual_seed(1), return_dict=False)[0]
    b = pipe(class_labels=[2, 2], generator=torch.Generator().manual_seed(1), return_dict=False)[0]
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


# ------------------------------------------------------------------------------- guidance
def test_guidance_one_is_the_conditional_model_and_guidance_is_cfg():
    pipe = audio_pipe()
    sched, labels = pipe.scheduler, torch.tensor([0, 2])
    sigmas = sched.sigmas(5)
    noise = torch.stack([torch.randn(1, 32, generator=g) for g in make_generators(7, 2)])
    denoiser = sched.denoiser(pipe.unet)
    cond = sample(denoiser, noise * float(sigmas[0]), sigmas, "heun", cond={"label": labels})
    assert torch.equal(_samples(pipe, guidance_scale=1.0, num_inference_steps=5, sampler="heun"), cond)
    guided = sample(ClassifierFreeGuidance(denoiser, 3.0, {"label": torch.tensor([3])}), noise * float(sigmas[0]),
                    sigmas, "heun", cond={"label": labels})
    out = _samples(pipe, guidance_scale=3.0, num_inference_steps=5, sampler="heun")
    assert torch.equal(out, guided) and (out - cond).abs().max() > 1e-3
    # no labels: the null label, i.e. the unconditional model
    uncond = sample(denoiser, noise * float(sigmas[0]), sigmas, "heun", cond={"label": torch.tensor([3, 3])})
    out = pipe(num_samples=2, generator=make_generators(7, 2), num_inference_steps=5, sampler="heun").audios
    assert torch.equal(out, uncond)
    # a stored default guidance applies when there are labels, and is left out when there are none
    stored = _quiet(AudioDiffusionPipeline(pipe.unet, _scheduler((1, 32), guidance_scale=3.0)))
    assert torch.equal(_samples(stored), _samples(pipe, guidance_scale=3.0))
    assert torch.equal(stored(num_samples=2, generator=make_generators(7, 2)).audios,
                       pipe(num_samples=2, generator=make_generators(7, 2)).audios)


class ByteTextEncoder(torch.nn.Module):
    """A stand-in caption encoder with multidiff.nn's interface: captions -> (context, mask), the
    UTF-8 bytes embedded, padded to the longest caption."""

    def __init__(self, dim=8):
        super().__init__()
        self.table = torch.nn.Embedding(256, dim)

    def forward(self, captions):
        width = max(len(c.encode()) for c in captions) or 1
        ids = torch.tensor([list(c.encode().ljust(width, b"\0")) for c in captions])
        return self.table(ids), ids != 0


def test_prompts_need_a_text_encoder_and_go_to_cond_when_there_is_one():
    pipe = audio_pipe()
    with pytest.raises(ValueError, match="no text encoder"):
        pipe(prompt="a low tone")
    with pytest.raises(ValueError, match="no text encoder"):
        pipe(class_labels=[0], negative_prompt="noise")
    text = ByteTextEncoder()
    unet = perturbed(unet1d_tiny(channels=(8, 16), factors=(4,), emb_dim=32, attention_heads=2, cross_attention_dim=8))
    pipe = _quiet(AudioDiffusionPipeline(unet, _scheduler((1, 32), num_classes=0, class_names=None), text_encoder=text))
    sched, sigmas = pipe.scheduler, pipe.scheduler.sigmas(3)
    x = torch.stack([torch.randn(1, 32, generator=g) for g in make_generators(0, 2)]) * float(sigmas[0])
    d = sched.denoiser(unet)
    context, mask = text(["low", "high"])
    want = sample(d, x, sigmas, "dpmpp_2m", cond={"context": context, "context_mask": mask})
    assert torch.equal(pipe(prompt=["low", "high"], generator=make_generators(0, 2)).audios, want)
    # guidance: both branches encoded in one call (one width), the negative caption as the unconditional one
    context, mask = text(["low", "high", "hiss", "hiss"])
    guided = ClassifierFreeGuidance(d, 2.0, {"context": context[2:], "context_mask": mask[2:]})
    want = sample(guided, x, sigmas, "dpmpp_2m", cond={"context": context[:2], "context_mask": mask[:2]})
    got = pipe(prompt=["low", "high"], negative_prompt="hiss", guidance_scale=2.0, generator=make_generators(0, 2))
    assert torch.equal(got.audios, want)
    # no prompt: the empty caption (as multidiff sample does for text models)
    context, mask = text(["", ""])
    want = sample(d, x, sigmas, "dpmpp_2m", cond={"context": context, "context_mask": mask})
    assert torch.equal(pipe(num_samples=2, generator=make_generators(0, 2)).audios, want)
    # one negative caption per sample; the captions are encoded once per generation, not per step
    calls = []
    text.register_forward_hook(lambda module, args, out: calls.append(list(args[0])))
    context, mask = text(["low", "high", "hiss", "hum"])
    guided = ClassifierFreeGuidance(d, 2.0, {"context": context[2:], "context_mask": mask[2:]})
    want = sample(guided, x, sigmas, "dpmpp_2m", cond={"context": context[:2], "context_mask": mask[:2]})
    calls.clear()
    got = pipe(prompt=["low", "high"], negative_prompt=["hiss", "hum"], guidance_scale=2.0,
               generator=make_generators(0, 2))
    assert torch.equal(got.audios, want) and calls == [["low", "high", "hiss", "hum"]]


# ---------------------------------------------------------------------- diffusers schedulers
@pytest.mark.parametrize("make", [
    lambda: EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5),
    lambda: EulerDiscreteScheduler(use_karras_sigmas=True),
    lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
], ids=["edm_euler", "euler_discrete", "dpmsolver++"])
def test_a_diffusers_scheduler_drives_the_pipeline(make):
    pipe = audio_pipe()
    out = _samples(pipe, scheduler=make(), num_inference_steps=6, length=64)
    assert out.shape == (2, 1, 64) and torch.isfinite(out).all() and out.abs().max() < 10
    assert torch.equal(out, _samples(pipe, scheduler=make(), num_inference_steps=6, length=64))
    with pytest.raises(ValueError, match="not both"):
        pipe(scheduler=make(), sampler="heun")


def test_assigning_a_diffusers_scheduler_makes_it_step(tmp_path):
    """The diffusers idiom: pipe.scheduler = X.from_config(pipe.scheduler.config). X gets the model's
    noise range from the config, steps every call after it, and is saved with the folder."""
    pipe = audio_pipe()
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert euler.config.use_karras_sigmas and euler.config.sigma_max == 80.0 and euler.config.sigma_min == 0.002
    euler.set_timesteps(6)
    assert float(euler.sigmas[0]) == pytest.approx(80.0) and float(euler.sigmas[-2]) == pytest.approx(0.002)
    edm = EDMEulerScheduler.from_config(pipe.scheduler.config)
    assert edm.config.sigma_data == 0.5  # the schedule's, not EDMEuler's default
    ours = _samples(pipe, num_inference_steps=6, length=64)
    direct = _samples(pipe, num_inference_steps=6, length=64,
                      scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, MultidiffSchedulerConfig)  # the schedule and parameterisation stay
    swapped = _samples(pipe, num_inference_steps=6, length=64)
    assert torch.equal(swapped, direct) and not torch.equal(swapped, ours)
    assert torch.equal(_samples(pipe, num_inference_steps=6, length=64, sampler="dpmpp_2m"), ours)  # sampler= wins
    pipe.save_pretrained(tmp_path)
    loaded = _quiet(AudioDiffusionPipeline.from_pretrained(tmp_path))
    assert type(loaded.scheduler.stepping).__name__ == "EulerDiscreteScheduler"
    assert torch.equal(_samples(loaded, num_inference_steps=6, length=64), swapped)
    loaded.scheduler.set_stepping_scheduler(None)
    assert torch.equal(_samples(loaded, num_inference_steps=6, length=64), ours)


def test_attention_kernels_are_switched_or_refused(monkeypatch):
    pipe = video_pipe()
    layers = pipe._attention_modules()
    assert layers and all(m.backend == "auto" for m in layers)
    import multidiff.nn as nn_module

    if not nn_module.xformers_available():
        with pytest.raises(ValueError, match="xformers attention needs the xformers package and a CUDA device"):
            pipe.enable_xformers_memory_efficient_attention()
        assert all(m.backend == "auto" for m in layers)  # nothing half-switched
    monkeypatch.setattr(nn_module, "xformers_available", lambda: True)
    pipe.enable_xformers_memory_efficient_attention()
    assert all(m.backend == "xformers" for m in layers)
    pipe.disable_xformers_memory_efficient_attention()
    assert all(m.backend == "auto" for m in layers)
    with pytest.raises(NotImplementedError, match="SDPA"):
        pipe.enable_attention_slicing()
    with pytest.raises(NotImplementedError, match="attention processors"):
        pipe.set_attn_processor(None)


def test_push_to_hub_without_a_token_is_refused_after_saving(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    pipe = audio_pipe()
    with pytest.raises(ValueError, match="push_to_hub needs a Hugging Face token .* the pipeline is saved at"):
        pipe.save_pretrained(tmp_path / "pipe", push_to_hub=True, repo_id="someone/tones")
    assert (tmp_path / "pipe" / "model_index.json").is_file() and (tmp_path / "pipe" / "README.md").is_file()


# ------------------------------------------------------------------------ shapes and outputs
def test_shape_overrides_and_outputs_that_write_files(tmp_path):
    out = audio_pipe()(class_labels=[1], length=128, generator=make_generators(0, 1))
    assert out.audios.shape == (1, 1, 128) and out.sample_rate == 8000 and out.class_labels == [1]
    (wav,) = out.save(tmp_path / "audio")
    wave, sr = load_audio(wav)
    assert sr == 8000 and wave.shape == (1, 128)
    torch.testing.assert_close(wave, out.audios[0].clamp(-1, 1), atol=1 / 32767, rtol=0)  # 16-bit PCM

    out = video_pipe()(num_samples=2, num_frames=5, height=16, output_type="np")
    assert isinstance(out.videos, np.ndarray) and out.videos.shape == (2, 1, 5, 16, 8) and out.fps == 4.0
    for fmt in ("mp4", "gif"):
        paths = out.save(tmp_path / "video", format=fmt)
        frames, _ = read_video(paths[1], channels=1)
        assert len(paths) == 2 and frames.shape == (1, 5, 16, 8)

    out = shapes_pipe()(class_labels=torch.tensor([0, 1, 2]), num_points=40)
    assert out.point_clouds.shape == (3, 40, 3)
    paths = out.save(tmp_path / "shapes")
    torch.testing.assert_close(load_ply_points(paths[2]), out.point_clouds[2])

    with pytest.raises(ValueError, match="multiple of the U-Net's down-sampling factor 4, got 42"):
        audio_pipe()(length=42)
    with pytest.raises(ValueError, match="multiples of the backbone's factor 2"):
        video_pipe()(height=7)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['length'\].*\['num_points'\]"):
        shapes_pipe()(length=5)


def test_argument_errors_are_named(tmp_path):
    pipe = audio_pipe()
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        pipe(sampler="nope")
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        pipe(class_labels=[3])
    with pytest.raises(ValueError, match="unknown class name 'bass'"):
        video_pipe()(class_labels="bass")
    with pytest.raises(ValueError, match="batch sizes disagree"):
        pipe(class_labels=[0, 1], num_samples=3)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="pil")
    with pytest.raises(ValueError, match="needs class_labels or a prompt"):
        pipe(guidance_scale=2.0)
    uncond = audio_pipe(num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(class_labels=[0])
    with pytest.raises(TypeError, match="diffusers scheduler goes to the call"):
        AudioDiffusionPipeline(pipe.unet, EulerDiscreteScheduler())
    with pytest.raises(ValueError, match="does not suit the UNet1D"):
        AudioDiffusionPipeline(pipe.unet, _scheduler((2, 32)))
    with pytest.raises(ValueError, match="unknown sampler"):
        _scheduler((1, 32), sampler="nope")


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline folder at 'someone/some-model'.*local folders only"):
        AudioDiffusionPipeline.from_pretrained("someone/some-model")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        MultidiffPipeline.from_pretrained(tmp_path)
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="training checkpoint.*multidiff export"):
        VideoDiffusionPipeline.from_pretrained(tmp_path)
    audio_pipe().save_pretrained(tmp_path / "audio")
    with pytest.raises(ValueError, match="holds a 'AudioDiffusionPipeline' pipeline, not a VideoDiffusionPipeline"):
        VideoDiffusionPipeline.from_pretrained(tmp_path / "audio")
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers runs no code from a folder unasked
        DiffusionPipeline.from_pretrained(tmp_path / "audio")


# ------------------------------------------------------------------------------------ export
def _train(out, *overrides):
    """A few CPU training steps; returns the run folder."""
    config = load_config(None, [f"trainer.out_dir={out}", "trainer.device=cpu", "trainer.batch_size=4",
                                "trainer.duration_samples=8", "trainer.tracker=none", "trainer.progress=false",
                                "trainer.resume=null", "trainer.cpu_threads=1", *overrides])
    Trainer(config).fit()
    return out


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    """Two steps of a tiny UNet1D on two classes of tones (8 kHz, 256 samples)."""
    root = tmp_path_factory.mktemp("tones")
    rows = []
    for k in range(8):
        t = torch.arange(256) / 8000
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * (300 + 500 * (k % 2)) * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": k % 2, "split": "train"})
    write_manifest(root / "manifest.csv", rows)
    return _train(root / "run", "model.name=audio_unet1d", "model.params.preset=tiny", "model.params.channels=[8, 16]",
                  "model.params.factors=[4]", "model.params.attention_heads=2", "model.params.emb_dim=32",
                  "data.name=audio", f"data.path={root / 'manifest.csv'}", "data.params.sample_rate=8000",
                  "data.params.length=256", "sampling.steps=3", "sampling.sampler=dpmpp_2m")


def test_export_equals_multidiff_sample(audio_run, tmp_path, capsys):
    folder = tmp_path / "pipe"
    assert main(["export", str(audio_run), str(folder)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote pipeline: {folder}" in printed and "(ema.safetensors) as AudioDiffusionPipeline" in printed
    pipe = _quiet(AudioDiffusionPipeline.from_pretrained(folder))
    c = pipe.scheduler.config
    assert (c.sample_shape, c.num_classes, c.sample_rate, c.sampler, c.num_inference_steps) == ([1, 256], 2, 8000,
                                                                                              "dpmpp_2m", 3)
    ema = read_module_state(resolve(audio_run) / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())
    # multidiff sample --seed 4 --num 3: labels k mod 2, sample k from the generator seeded 4 + k
    for guidance in ("1", "2.5"):
        out = tmp_path / f"samples-{guidance}"
        assert main(["sample", str(audio_run), "--num", "3", "--seed", "4", "--guidance", guidance, "--device", "cpu",
                     "--out", str(out)]) == 0
        want = load_file(out / "samples.safetensors")
        got = pipe(class_labels=want["labels"], generator=make_generators(4, 3), guidance_scale=float(guidance))
        assert got.audios.shape == (3, 1, 256) and got.class_labels == [0, 1, 0]
        assert torch.equal(got.audios, want["samples"])
    # the model card: front matter, what it generates, the training, the results given
    result = tmp_path / "result.json"
    result.write_text('{"metrics": {"accuracy": 0.875, "n": 8}, "command": "multidiff eval RUN --num 8"}')
    assert main(["export", str(audio_run), str(tmp_path / "carded"), "--result", str(result), "--license", "mit"]) == 0
    card = (tmp_path / "carded" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: multidiff\nlicense: mit\n")
    for text in ("class-conditional, 2 classes", "sample rate: 8000 Hz", "8 training samples seen",
                 "accuracy 0.875, n 8", "(`multidiff eval RUN --num 8`)", "AudioDiffusionPipeline.from_pretrained"):
        assert text in card, text
    assert "None given" in (folder / "README.md").read_text()
    result.write_text('{"accuracy": 0.875}')
    assert main(["export", str(audio_run), str(tmp_path / "bad"), "--result", str(result)]) == 2
    assert "no 'metrics' mapping" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # --no-ema exports the trained weights
    trained = export_pipeline(audio_run, tmp_path / "raw", use_ema=False)
    raw = read_module_state(resolve(audio_run) / "model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in trained.unet.state_dict().items())


@pytest.mark.parametrize("kind,overrides", [
    ("video", ["model.name=video_unet3d", "model.params.preset=tiny", "model.params.channels=[8, 16]",
               "model.params.emb_dim=32", "model.params.attention_heads=2", "data.params.shape=[1, 3, 8, 8]"]),
    ("video_transformer", ["model.name=video_transformer", "model.params.preset=tiny", "model.params.hidden_dim=16",
                           "model.params.emb_dim=16", "model.params.patch_size=4", "data.params.shape=[1, 3, 8, 8]"]),
    ("shapes", ["model.name=shapes_transformer", "model.params.preset=latent_tiny", "model.params.dim=16",
                "model.params.depth=1", "model.params.num_latents=4", "model.params.fourier_features=4",
                "data.params.shape=[16, 3]"]),
])
def test_export_picks_the_pipeline_of_the_backbone(kind, overrides, tmp_path):
    run = _train(tmp_path / "run", "data.name=synthetic", "data.params.num_classes=2", "sampling.steps=2", *overrides)
    export_pipeline(run, tmp_path / "pipe")
    pipe = _quiet(MultidiffPipeline.from_pretrained(tmp_path / "pipe"))
    assert type(pipe) is {"shapes": PointCloudDiffusionPipeline}.get(kind, VideoDiffusionPipeline)
    if kind.startswith("video"):  # each video backbone comes back as itself
        assert type(pipe.unet).__name__ == {"video": "UNet3D", "video_transformer": "VideoTransformer"}[kind]
    out = pipe(class_labels=[1, 0], generator=make_generators(0, 2), guidance_scale=2.0, return_dict=False)[0]
    assert out.shape == (2, *pipe.scheduler.config.sample_shape) and torch.isfinite(out).all()


def test_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    Trainer(tiny_config(tmp_path / "toy", steps=1)).fit()
    assert main(["export", str(tmp_path / "toy"), str(tmp_path / "out")]) == 2
    assert "no pipeline for the 'toy2d' backbone 'toy_mlp'" in capsys.readouterr().err
