"""The audio modality through the trainer: recipe -> training -> previews -> sample -> eval."""
import csv
import math
from pathlib import Path

import pytest
import torch

from multidiff.audio.io import load_audio, save_audio
from multidiff.cli import main
from multidiff.manifest import write_manifest
from multidiff.train.config import load_config
from multidiff.train.testing import device_under_test

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
    """Two classes of tones (low / high) of varied lengths, with padding for the short ones."""
    root = tmp_path_factory.mktemp("tones")
    rows = []
    for k in range(16):
        label = k % 2
        freq = (220.0 if label == 0 else 880.0) * (1 + 0.02 * k)
        seconds = 0.05 + 0.01 * k
        t = torch.arange(int(8000 * seconds)) / 8000
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * freq * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": label, "text": f"tone {k}", "split": "train"})
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def overrides(manifest, out):
    return [f"data.path={manifest}", "data.params.sample_rate=8000", "data.params.length=1024",
            "model.params.preset=tiny", f"trainer.out_dir={out}", f"trainer.device={device_under_test()}",
            "trainer.batch_size=8", "trainer.duration_samples=64", "trainer.log_every_samples=8",
            "trainer.checkpoint_every_samples=64", "trainer.preview_every_samples=64", "trainer.preview_samples=4",
            "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
            "sampling.steps=4", "sampling.num_samples=4", "sampling.batch_size=4"]


def test_audio_recipe_trains_previews_samples_and_evaluates(tone_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = str(REPO / "recipes/audio/tones_smoke.yaml")
    assert main(["train", recipe, *overrides(tone_manifest, out)]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    wavs = sorted((out / "previews").rglob("*.wav"))
    assert len(wavs) == 4 and list((out / "previews").rglob("spectrograms.png"))
    wave, sr = load_audio(wavs[0])
    assert sr == 8000 and wave.shape == (1, 1024)
    ckpt = out / "checkpoints" / "latest"
    assert main(["sample", str(ckpt), "--num", "3", "--steps", "4", "--sampler", "dpmpp_2m", "--seed", "1",
                 "--out", str(tmp_path / "samples"), "--label", "1"]) == 0
    assert len(list((tmp_path / "samples").rglob("*.wav"))) == 3
    assert main(["eval", str(ckpt), "--num", "4", "--steps", "4"]) == 0
    assert "rms_mean" in capsys.readouterr().out


def test_padding_is_masked_out_of_the_loss(tone_manifest, tmp_path):
    """With length longer than every clip, changing what the model sees in the padded tail
    must not change the loss: the trainer hands the data set's loss_mask to the loss."""
    from multidiff.train.trainer import Trainer

    cfg = load_config(str(REPO / "recipes/audio/tones_smoke.yaml"),
                      overrides(tone_manifest, tmp_path / "m") + ["data.params.length=4096", "data.params.random_crop=false"])
    trainer = Trainer(cfg)
    item = trainer.dataset[0]
    assert float(item["loss_mask"].sum()) < 4096  # this clip is padded
    device = trainer.accelerator.device  # auto: cuda on a GPU machine
    batch = {"x": item["x"][None].to(device), "loss_mask": item["loss_mask"][None].to(device),
             "label": torch.tensor([item["label"]], device=device)}
    gens = [torch.Generator(device).manual_seed(0)]
    base = trainer.loss_fn(trainer.denoiser, batch["x"], {"label": batch["label"]}, gens, mask=batch["loss_mask"])

    def denoiser_with_garbage_tail(x, sigma, cond):
        out = trainer.denoiser(x, sigma, cond)
        return out + (1 - batch["loss_mask"]) * 100.0

    gens = [torch.Generator(device).manual_seed(0)]
    masked = trainer.loss_fn(denoiser_with_garbage_tail, batch["x"], {"label": batch["label"]}, gens,
                             mask=batch["loss_mask"])
    torch.testing.assert_close(base, masked)


def test_bad_audio_path_is_a_config_error(tmp_path):
    from multidiff.train.config import ConfigError

    with pytest.raises(ConfigError, match="data.path"):
        load_config(str(REPO / "recipes/audio/tones_smoke.yaml"), [f"data.path={tmp_path / 'nope.csv'}"])


def test_label_to_pitch_mapping_from_a_notes_manifest(tmp_path):
    from multidiff.audio.registry import _label_pitches

    (tmp_path / "m.csv").write_text("path,label,pitch_instrument,pitch\na.wav,0,0,60\nb.wav,0,1,60\nc.wav,1,2,61\n")
    assert _label_pitches(tmp_path / "m.csv", "pitch_instrument") == {0: 60.0, 1: 60.0, 2: 61.0}
    assert _label_pitches(tmp_path / "m.csv", "label") == {0: 60.0, 1: 61.0}
    (tmp_path / "d.csv").write_text("path,label\na.wav,3\n")
    assert _label_pitches(tmp_path / "d.csv", "label") == {}


def test_complete_continuation_and_inpainting_keep_the_given_audio(tone_manifest, tmp_path):
    """multidiff complete on a tiny trained model: the given part of every output is the truth
    (to 16-bit WAV precision), the generated region is new audio, and metrics cover all three fills."""
    import json

    out = tmp_path / "run"
    recipe = str(REPO / "recipes/audio/tones_smoke.yaml")
    assert main(["train", recipe, *overrides(tone_manifest, out), "data.params.split=null"]) == 0
    for mode, region in (("continuation", slice(512, 1024)), ("inpainting", slice(384, 640))):
        dest = tmp_path / mode
        assert main(["complete", str(out / "checkpoints" / "latest"), "--mode", mode, "--num", "3", "--steps", "4",
                     "--split", "train", "--out", str(dest)]) == 0
        metrics = json.loads((dest / "metrics.json").read_text())
        assert metrics["n"] == 3 and metrics["region_seconds"] == pytest.approx((region.stop - region.start) / 8000)
        for fill in ("generated", "baseline_silence", "baseline_copy"):
            assert metrics[fill]["mr_stft"] > 0
        assert metrics["baseline_silence"]["si_sdr_db"] is None  # a silent estimate has no SI-SDR
        for k in range(3):
            truth = load_audio(dest / f"{k:03d}_truth.wav")[0]
            generated = load_audio(dest / f"{k:03d}_generated.wav")[0]
            keep = torch.ones(1024, dtype=torch.bool)
            keep[region] = False
            assert (generated[:, keep] - truth[:, keep]).abs().max() <= 2 / 32768
            assert (generated[:, region] - truth[:, region]).abs().max() > 1e-3
        assert (dest / "spectrograms.png").stat().st_size > 10_000


def test_complete_scores_the_class_of_completed_clips_with_the_data_sets_classifier(tone_manifest, tmp_path):
    """With classifier.safetensors beside the manifest, multidiff complete reports the share of
    completed clips (and of the truth, and of the given part alone) classified as the clip's label."""
    import json
    import shutil

    from multidiff.audio.metrics import classifier_outputs, load_split, save_classifier, train_classifier

    data = tmp_path / "tones"
    shutil.copytree(tone_manifest.parent, data)
    waves, labels = load_split(data / "manifest.csv", "train", 8000, 1024)
    classifier = train_classifier(waves, labels, 2, sample_rate=8000, epochs=3, batch_size=8, progress=False)
    save_classifier(classifier, data / "classifier.safetensors")
    out = tmp_path / "run"
    recipe = str(REPO / "recipes/audio/tones_smoke.yaml")
    assert main(["train", recipe, *overrides(data / "manifest.csv", out), "data.params.split=null"]) == 0
    dest = tmp_path / "done"
    assert main(["complete", str(out / "checkpoints" / "latest"), "--mode", "continuation", "--num", "5",
                 "--steps", "4", "--split", "train", "--out", str(dest)]) == 0
    metrics = json.loads((dest / "metrics.json").read_text())
    expected = float((classifier_outputs(classifier, waves[:5])[0].argmax(-1) == labels[:5]).float().mean())
    assert metrics["truth"]["classifier_accuracy"] == pytest.approx(expected)
    for fill in ("generated", "baseline_silence"):
        assert any(metrics[fill]["classifier_accuracy"] == pytest.approx(k / 5) for k in range(6))


def test_audio_task_masks_cover_the_requested_parts():
    from multidiff.audio.registry import audio_task_mask

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = audio_task_mask(1000, "continue", g, known_range=(0.25, 0.75))
        k = int(m.sum())
        assert 250 <= k <= 750 and m[0, :k].all() and not m[0, k:].any()  # a prefix is given
        m = audio_task_mask(1000, "inpaint", g, gap_range=(0.1, 0.4))
        gap = (m[0] == 0).nonzero().flatten()
        assert 100 <= len(gap) <= 400 and int(gap[-1] - gap[0]) + 1 == len(gap)  # one contiguous gap
    assert not audio_task_mask(1000, "generate", g).any()
    assert not audio_task_mask(1000, "mixed", g, p_unconditional=1.0).any()
    last = [int(audio_task_mask(1000, "mixed", g)[0, -1]) for _ in range(40)]  # continuation ends unknown
    assert 5 < sum(last) < 35
    with pytest.raises(ValueError, match="unknown masking task"):
        audio_task_mask(10, "outpaint", g)


def test_masked_training_feeds_the_given_audio_and_scores_only_the_rest(tone_manifest, tmp_path):
    """data.params.task=mixed: items carry concat = [mask, x * mask], the loss mask excludes the
    given samples, draws change with the epoch, the UNet gets 2 extra channels automatically, and
    multidiff complete then conditions through them (no replacement unless asked)."""
    import json

    from multidiff.train.data import PositionDataset
    from multidiff.train.trainer import Trainer

    out = tmp_path / "run"
    extra = ["data.params.task=mixed", "data.params.p_unconditional=0.0", "data.params.split=null",
             "data.params.random_crop=false"]
    cfg = load_config(str(REPO / "recipes/audio/tones_smoke.yaml"), overrides(tone_manifest, out) + extra)
    trainer = Trainer(cfg)
    assert trainer.unwrapped().config.extra_in_channels == 2
    data = trainer.dataset
    item = data[3]
    mask = item["concat"][:1]
    assert item["concat"].shape == (2, 1024) and 0 < float(mask.mean()) < 1
    torch.testing.assert_close(item["concat"][1:], item["x"] * mask)
    assert torch.equal(item["loss_mask"], (1 - mask) * data.audio[3]["loss_mask"])
    stream = PositionDataset(data, seed=0)
    n = len(data)
    first = {stream.index(p): stream[p]["concat"][0] for p in range(n)}
    second = {stream.index(p): stream[p]["concat"][0] for p in range(n, 2 * n)}
    assert sum(not torch.equal(first[k], second[k]) for k in first) > n // 2  # new spans each epoch
    again = PositionDataset(data, seed=0)
    assert torch.equal(again[n + 2]["concat"], stream[n + 2]["concat"])  # reproducible from the position alone
    assert main(["train", str(REPO / "recipes/audio/tones_smoke.yaml"), *overrides(tone_manifest, out), *extra]) == 0
    ckpt = str(out / "checkpoints" / "latest")
    for replace, expect in (("auto", False), ("yes", True)):
        dest = tmp_path / f"complete-{replace}"
        assert main(["complete", ckpt, "--mode", "inpainting", "--num", "2", "--steps", "3", "--split", "train",
                     "--replace", replace, "--out", str(dest)]) == 0
        metrics = json.loads((dest / "metrics.json").read_text())
        assert metrics["masked_training"] is True and metrics["replacement"] is expect
        assert metrics["generated"]["mr_stft"] > 0


def test_mel_conditioning_and_griffin_lim_baseline():
    from multidiff.audio.metrics import griffin_lim_from_mel, mel_conditioning, multires_stft_distance

    t = torch.arange(8000) / 8000
    tone = (0.5 * torch.sin(2 * math.pi * 440 * t))[None, None]
    mel = mel_conditioning(tone, 8000, n_mels=16, hop=64)
    assert mel.shape == (1, 16, 8000) and mel.abs().max() < 3
    assert int(mel[0, :, 4000].argmax()) == int(mel[0, :, 2000].argmax())  # a steady tone: one steady band
    rebuilt = griffin_lim_from_mel(tone, 8000, n_mels=16, hop=64, iterations=32)
    assert rebuilt.shape == (1, 1, 8000)
    assert float(multires_stft_distance(rebuilt, tone)) < 0.5 * float(multires_stft_distance(0 * tone + 1e-4, tone))


def test_vocoder_task_trains_and_completes_against_griffin_lim(tone_manifest, tmp_path):
    import json

    out = tmp_path / "run"
    extra = ["data.params.task=vocoder", "data.params.mel_bins=16", "data.params.mel_hop=64", "data.params.split=null",
             "data.params.num_classes=0"]
    assert main(["train", str(REPO / "recipes/audio/tones_smoke.yaml"), *overrides(tone_manifest, out), *extra]) == 0
    ckpt = str(out / "checkpoints" / "latest")
    dest = tmp_path / "vocode"
    assert main(["complete", ckpt, "--mode", "vocoder", "--num", "2", "--steps", "3", "--split", "train",
                 "--out", str(dest)]) == 0
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["region_seconds"] == pytest.approx(1024 / 8000)
    assert metrics["generated"]["mr_stft"] > 0 and metrics["baseline_griffin_lim"]["mr_stft"] > 0
    assert "baseline_copy" not in metrics
    with pytest.raises(SystemExit, match="needs a model trained with data.params.task=vocoder"):
        main(["complete", ckpt, "--mode", "continuation", "--num", "2", "--steps", "3", "--split", "train"])


def test_evaluation_reports_both_judges_beside_their_accuracy_on_real_clips(tone_manifest, tmp_path):
    """With a noise-augmented and a clean-only classifier beside the manifest, the evaluator scores
    samples by both and prints each judge's own accuracy on the real test clips, clean and at 20 dB
    SNR; real test clips given as the samples score exactly that accuracy."""
    import shutil

    from multidiff.audio.metrics import classifier_outputs, load_split, save_classifier, train_classifier
    from multidiff.audio.registry import audio_evaluate
    from multidiff.train.config import load_config
    from multidiff.train.registry import DataSpec

    data = tmp_path / "tones"
    shutil.copytree(tone_manifest.parent, data)
    text = (data / "manifest.csv").read_text().splitlines()
    (data / "manifest.csv").write_text("\n".join(text[:13] + [ln.replace(",train", ",test") for ln in text[13:]]) + "\n")
    waves, labels = load_split(data / "manifest.csv", "train", 8000, 1024)
    judges = {}
    for name, noise in (("classifier", (0.0, 40.0)), ("classifier_clean", None)):
        judges[name] = train_classifier(waves, labels, 2, sample_rate=8000, epochs=3, batch_size=8, progress=False,
                                        noise_snr_db=noise)
        save_classifier(judges[name], data / f"{name}.safetensors")
    config = load_config(str(REPO / "recipes/audio/tones_smoke.yaml"), [f"data.path={data / 'manifest.csv'}"],
                         validate_paths=False)
    real, real_labels = load_split(data / "manifest.csv", "test", 8000, 1024)
    m = audio_evaluate(real, config, labels=real_labels, spec=DataSpec((1, 1024), 2, "audio", {"sample_rate": 8000}))
    for name, judge in judges.items():
        expected = float((classifier_outputs(judge, real)[0].argmax(1) == real_labels).float().mean())
        assert m[f"{name}_accuracy"] == pytest.approx(expected)
        assert m[f"{name}_real_accuracy"] == pytest.approx(expected)
        assert 0 <= m[f"{name}_real_accuracy_snr20"] <= 1


def test_longform_window_plan_and_seam_metrics_known_answers():
    from multidiff.audio.longform import level_variation, seam_jumps, window_plan

    assert window_plan(16 * 100, 4 * 100, 0.5) == (7, 200, [400, 600, 800, 1000, 1200, 1400])
    assert window_plan(400, 400, 0.5) == (1, 200, [])
    with pytest.raises(ValueError, match="overlap"):
        window_plan(1600, 400, 1.0)
    sr = 8000
    t = torch.arange(sr) / sr
    tone = 0.25 * torch.sin(2 * math.pi * 440 * t)[None]
    stepped = tone.clone()
    stepped[..., 4000:] *= 2  # +6.02 dB from sample 4000 on
    assert seam_jumps(tone, [4000], 160)[0] < 0.1
    assert seam_jumps(stepped, [4000], 160)[0] == pytest.approx(20 * math.log10(2), abs=0.1)
    # 20 ms frames hold 8.8 periods of 440 Hz: their levels ripple by ~0.15 dB; the one jump is < 5% of the pairs
    assert level_variation([tone], 160) < 0.3 and level_variation([stepped], 160) < 0.3


def test_longform_generation_through_complete(tone_manifest, tmp_path, capsys):
    """`multidiff complete --mode longform` makes items of --seconds from a model trained on
    1024-sample clips, window by window; an item does not depend on the others in the batch; too
    short a request is a one-line error (exit 2)."""
    import json
    from dataclasses import replace

    from multidiff.audio.longform import generate_long
    from multidiff.train.trainer import load_for_sampling

    out = tmp_path / "run"
    assert main(["train", str(REPO / "recipes/audio/tones_smoke.yaml"), *overrides(tone_manifest, out)]) == 0
    ckpt = out / "checkpoints" / "latest"
    assert main(["complete", str(ckpt), "--mode", "longform", "--seconds", "0.4", "--num", "2", "--steps", "3",
                 "--split", "train", "--out", str(tmp_path / "long")]) == 0
    metrics = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert metrics["seam_seconds"] == pytest.approx([1024 / 8000 + k * 512 / 8000 for k in range(5)])
    assert metrics["scores"]["seams"] == 5 and metrics["scores"]["n"] == 2
    wave, sr = load_audio(tmp_path / "long" / "000_long.wav")
    assert sr == 8000 and wave.shape == (1, 3200)

    model, config, spec, *_ = load_for_sampling(ckpt, device="cpu")
    sampling = replace(config.sampling, steps=3, seed=5, batch_size=4)
    two, seams = generate_long(model, config.objective, spec, replace(sampling, num_samples=2), 3200)
    one, _ = generate_long(model, config.objective, spec, replace(sampling, num_samples=1), 3200)
    torch.testing.assert_close(one[0], two[0])
    assert seams == [1024, 1536, 2048, 2560, 3072] and torch.isfinite(two).all()
    capsys.readouterr()
    assert main(["complete", str(ckpt), "--mode", "longform", "--seconds", "0.05", "--out", str(tmp_path / "x")]) == 2
    assert "shorter than the model's own window" in capsys.readouterr().err
