"""Log-mel spectrogram diffusion (multidiff.audio.spectrogram): the codec against torchaudio, its
inverse, the data set and the recipe path through train / sample / eval."""
import csv
import math
from pathlib import Path

import pytest
import torch

from multidiff.audio.io import load_audio, save_audio
from multidiff.audio.spectrogram import MelCodec, griffin_lim, nonnegative_mel_inverse
from multidiff.cli import main

REPO = Path(__file__).resolve().parents[1]


def chirp(n: int = 8000, sample_rate: int = 16000) -> torch.Tensor:
    t = torch.arange(n) / sample_rate
    f = 200 + 600 * t / t[-1]
    phase = 2 * math.pi * torch.cumsum(f, 0) / sample_rate
    return (0.4 * torch.sin(phase) + 0.2 * torch.sin(3 * phase)) * torch.hann_window(n, periodic=False)


def test_encode_matches_torchaudio_mel_and_pads_with_silence():
    import torchaudio

    codec = MelCodec(n_mels=40, n_fft=512, hop=128, frame_multiple=8)
    wave = torch.stack([chirp(), 0.5 * chirp().flip(0)])[:, None]
    mel = codec.encode(wave)
    frames = 1 + 8000 // 128  # 63 centred frames, padded to 64
    assert mel.shape == (2, 40, 64) and codec.frames(8000) == 64
    reference = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=128, n_mels=40, power=1.0)(wave[:, 0])
    expected = (reference.clamp(min=codec.floor).log() - codec.offset) / codec.scale
    torch.testing.assert_close(mel[..., :frames], expected, atol=1e-4, rtol=1e-4)
    assert torch.all(mel[..., frames:] == codec.silence)
    torch.testing.assert_close(codec.encode(torch.zeros(1, 1, 8000)), torch.full((1, 40, 64), codec.silence))


def test_codec_rejects_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="n_mels"):
        MelCodec(n_mels=600, n_fft=512)
    with pytest.raises(ValueError, match="hop"):
        MelCodec(n_fft=256, hop=512)
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        MelCodec().encode(torch.zeros(16000))
    with pytest.raises(ValueError, match=r"\(batch, 80, frames\)"):
        MelCodec().decode(torch.zeros(1, 64, 64))


def test_nonnegative_inverse_fits_the_mel_better_than_the_clamped_pseudo_inverse():
    codec = MelCodec(n_mels=40, n_fft=512, hop=128)
    fb = codec.filterbank()
    spectrum = torch.stft(chirp(), 512, 128, window=torch.hann_window(512), return_complex=True).abs()[None]
    mel = torch.einsum("bft,fm->bmt", spectrum, fb)
    clamped = (torch.linalg.pinv(fb.T) @ mel).clamp(min=0)
    refined = nonnegative_mel_inverse(mel, fb)
    assert refined.min() >= 0

    def error(s):
        return float((torch.einsum("bft,fm->bmt", s, fb) - mel).norm() / mel.norm())

    assert error(refined) < 0.5 * error(clamped)
    assert error(refined) < 0.02


def test_griffin_lim_recovers_a_magnitude_and_does_not_mix_items():
    window = torch.hann_window(512)
    waves = torch.stack([chirp(), chirp().flip(0)])
    magnitude = torch.stft(waves, 512, 128, window=window, return_complex=True).abs()

    def convergence(w):  # spectral convergence (Sturmel & Daudet 2011): ||S - |STFT(w)||| / ||S||
        return float((torch.stft(w, 512, 128, window=window, return_complex=True).abs() - magnitude).norm()
                     / magnitude.norm())

    start = griffin_lim(magnitude, 512, 128, 8000, iterations=1)
    done = griffin_lim(magnitude, 512, 128, 8000, iterations=64)
    assert done.shape == (2, 8000)
    assert convergence(done) < 0.15 < convergence(start)
    alone = griffin_lim(magnitude[1:], 512, 128, 8000, iterations=64)
    torch.testing.assert_close(alone[0], done[1], atol=1e-5, rtol=1e-4)


def test_decode_then_encode_returns_the_mel():
    codec = MelCodec(n_mels=64, n_fft=512, hop=128)
    wave = chirp()[None, None]
    mel = codec.encode(wave)
    audio = codec.decode(mel, 8000)
    assert audio.shape == (1, 1, 8000)
    again = codec.encode(audio)
    loud = mel > codec.silence + 1.0  # more than 3.6 nats (31 dB) above the floor: the bins that carry the sound
    # log-magnitude error below 0.12 x scale (0.43 nats, under 4 dB) on average in the loud bins (measured: 0.088)
    assert float((again - mel)[loud].abs().mean()) < 0.12
    assert float(torch.corrcoef(torch.stack([again[loud], mel[loud]]))[0, 1]) > 0.98
    # Griffin-Lim started from PGHI's phase: 8 iterations end closer to the mel than 8 from a random
    # phase (measured 0.086 vs 0.107) and than the 64 above
    def error(**decoding):
        return float((codec.encode(codec.decode(mel, 8000, **decoding)) - mel)[loud].abs().mean())

    pghi_error = error(phase_init="pghi", iterations=8)
    assert pghi_error < 0.9 * error(iterations=8)
    assert pghi_error < float((again - mel)[loud].abs().mean())
    with pytest.raises(ValueError, match="phase_init"):
        codec.decode(mel, 8000, phase_init="zero")


def test_silence_gate_keeps_silence_silent_and_sound_untouched():
    """A clip silent for its first 4000 samples, then a tone: the gate is 0 up to the middle 3/4 of
    the last window that does not reach the tone, 1 from there; decoding with it leaves the silence
    exactly silent (Griffin-Lim alone smears sound into it) and the tone as it was."""
    codec = MelCodec(n_mels=64, n_fft=512, hop=128)
    wave = torch.zeros(1, 1, 8000)
    wave[..., 4000:] = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 16000)
    mel = codec.encode(wave)
    gate = codec.silent_frames_gate(mel, 8000)
    last_silent = (4000 - 256) // 128  # the last frame whose window (centre +- n_fft/2) ends before sample 4000
    edge = last_silent * 128 + 3 * 512 // 8  # its centre + half of 3/4 of the window
    assert edge < 4000
    assert gate.shape == (1, 1, 8000)
    assert float(gate[..., :edge].abs().max()) == 0.0
    assert float(gate[..., edge:].min()) == 1.0
    plain = codec.decode(mel, 8000)
    gated = codec.decode(mel, 8000, silence_gate=True)
    quiet = slice(0, edge)
    assert float(plain[..., quiet].abs().max()) > 0 and float(gated[..., quiet].abs().max()) == 0.0
    torch.testing.assert_close(gated[..., 4000:], plain[..., 4000:])


@pytest.mark.parametrize("span", [1, 128, 200, 512])
def test_silence_gate_span_is_centred_on_each_silent_frame(span):
    """Frames 10 and 20 of 40 silent (mel at the floor), the rest sounding: the gate is 0 exactly on
    [t hop - span // 2, t hop - span // 2 + span) for t = 10, 20 and 1 elsewhere."""
    codec = MelCodec(n_mels=16, n_fft=512, hop=128)
    mel = torch.full((1, 16, 40), codec.silence + 1.0)
    mel[..., [10, 20]] = codec.silence
    gate = codec.silent_frames_gate(mel, 39 * 128, span=span)[0, 0]
    expected = torch.ones(39 * 128)
    for t in (10, 20):
        expected[t * 128 - span // 2: t * 128 - span // 2 + span] = 0.0
    torch.testing.assert_close(gate, expected)
    with pytest.raises(ValueError, match="span"):
        codec.silent_frames_gate(mel, 100, span=0)


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("mel-tones")
    rows = []
    for k in range(12):
        label = k % 2
        t = torch.arange(4000) / 8000
        freq = (220.0 if label == 0 else 880.0) * (1 + 0.02 * k)
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * freq * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": label, "text": f"tone {k}", "split": "train"})
    (root / "broken.wav").write_bytes(b"RIFF not a wav")
    rows.append({"path": "broken.wav", "label": 0, "text": "", "split": "train"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_mel_data_set_items_spec_and_cache(tone_manifest):
    from multidiff.audio.spectrogram import MelDataParams, MelTrainData, codec_from_meta

    params = MelDataParams(sample_rate=8000, length=4096, n_mels=32, n_fft=256, hop=64)
    data = MelTrainData(params, str(tone_manifest), seed=0)
    assert data.spec.sample_shape == (32, 68) and data.spec.modality == "audio_mel" and data.spec.num_classes == 2
    item = data[0]
    assert item["x"].shape == (32, 68) and item["label"] == 0
    codec = codec_from_meta(data.spec.meta)
    assert codec == params.codec()
    wave, _ = load_audio(tone_manifest.parent / "0.wav", 8000)
    expected = codec.encode(torch.nn.functional.pad(wave, (0, 4096 - wave.shape[-1]))[None])[0]
    torch.testing.assert_close(item["x"], expected)
    assert data[0]["x"] is item["x"]  # the fixed waveform's mel is kept


def test_mel_recipe_trains_samples_and_evaluates(tone_manifest, tmp_path, capsys):
    """The digits_mel recipe's path at toy size: the previews, `multidiff sample` and `eval` all see audio."""
    import json

    from multidiff.train.testing import device_under_test

    out = tmp_path / "run"
    args = [f"data.path={tone_manifest}", "data.params.sample_rate=8000", "data.params.length=4096",
            "data.params.n_mels=32", "data.params.n_fft=256", "data.params.hop=64", "data.params.griffin_lim_iters=4",
            "model.params.channels=[32,48,64]", "model.params.blocks_per_level=1", "model.params.emb_dim=64",
            f"trainer.out_dir={out}", f"trainer.device={device_under_test()}", "trainer.batch_size=4",
            "trainer.duration_samples=16", "trainer.log_every_samples=4", "trainer.checkpoint_every_samples=16",
            "trainer.preview_every_samples=16", "trainer.preview_samples=2", "trainer.tracker=none",
            "trainer.progress=false", "trainer.resume=null", "sampling.steps=3", "sampling.num_samples=2",
            "sampling.batch_size=2"]
    assert main(["train", str(REPO / "recipes/audio/digits_mel.yaml"), *args]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "losses.csv"))]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    wavs = sorted((out / "previews").rglob("*.wav"))
    assert len(wavs) == 2 and list((out / "previews").rglob("spectrograms.png"))
    wave, sr = load_audio(wavs[0])
    assert sr == 8000 and wave.shape == (1, 4096)
    ckpt = out / "checkpoints" / "latest"
    assert main(["sample", str(ckpt), "--num", "3", "--steps", "3", "--seed", "1", "--label", "1",
                 "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").rglob("*.wav"))) == 3
    assert main(["eval", str(ckpt), "--num", "2", "--steps", "3", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["n"] == 2 and metrics["rms_mean"] > 0  # Griffin-Lim audio, not mel values
    assert "rms_mean" in capsys.readouterr().out


def test_decode_caps_overshoot_and_keeps_audio_in_range():
    """Guidance can push log-mel values past anything audio in [-1, 1] gives: decoding caps them at a
    full-scale sine's level and scales any item louder than full scale to peak 1, alone."""
    codec = MelCodec(n_mels=64, n_fft=512, hop=128, griffin_lim_iters=8)
    sine = 0.999 * torch.sin(2 * math.pi * 1000 * torch.arange(8000) / 16000)
    assert float(codec.encode(sine[None, None]).max()) <= codec.full_scale + 0.01
    quiet = codec.encode(0.1 * chirp()[None, None])
    loud = quiet + 1.5  # 1.5 x scale = 5.4 nats, 220 times the amplitude
    audio = codec.decode(torch.cat([quiet, loud]), 8000)
    assert float(audio[1].abs().max()) == pytest.approx(1.0, abs=1e-5)
    assert 0.02 < float(audio[0].abs().max()) < 0.5
    torch.testing.assert_close(audio[:1], codec.decode(quiet, 8000))


def test_vocoder_synthesis_inverts_the_codec_stft():
    """The vocoder's head makes audio by the inverse of the codec's STFT (window, hop, centred
    frames): fed a clip's own log-magnitude and phase it gives the clip back."""
    from multidiff.audio.vocoder import MelVocoder

    codec = MelCodec(n_mels=40, n_fft=512, hop=128)
    vocoder = MelVocoder(codec, dim=16, hidden=32, layers=1)
    wave = 0.5 * chirp()[None]  # (1, 8000)
    spec = torch.stft(wave, 512, 128, window=torch.hann_window(512), center=True, return_complex=True)
    torch.testing.assert_close(vocoder.synthesize(spec.abs().clamp(min=1e-12).log(), spec.angle(), 8000)[:, 0],
                               wave, atol=1e-5, rtol=0)
    mel = vocoder.encode(wave[None]).latent_dist.mean
    assert mel.shape == (1, 40, 1 + 8000 // 128)  # the clip's frames, without the diffusion models' padding
    assert vocoder.decode(mel, 8000).sample.shape == (1, 1, 8000)
    assert vocoder.decode(mel, 8000, phase_iterations=4).sample.shape == (1, 1, 8000)
    # the magnitude loss is 0 for a head that predicts the clip's own spectrum, and grows with an error
    vocoder.magnitude_weight, vocoder.loss_floor = 1.0, 1e-12  # no floor: the closed form below holds in every bin
    vocoder.spectrum = lambda m: (spec.abs().clamp(min=1e-12).log(), spec.angle())
    recon, loss = vocoder.reconstruct_with_loss(mel, wave[None])
    torch.testing.assert_close(recon[:, 0], wave, atol=1e-5, rtol=0)
    assert float(loss) < 1e-5
    vocoder.spectrum = lambda m: (spec.abs().clamp(min=1e-12).log() + 0.1, spec.angle())  # 10.5% too loud
    assert float(vocoder.reconstruct_with_loss(mel, wave[None])[1]) == pytest.approx(0.1 + (math.exp(0.1) - 1), rel=1e-3)
    # weighed by the mel density the bins' weights average 1 (a uniform error costs the same) and the
    # lowest bin weighs (700 + sr/2) / 700 times the highest
    weighted = MelVocoder(codec, dim=16, hidden=32, layers=1, magnitude_weight=1.0, magnitude_floor=1e-12,
                          mel_weighted_loss=True)
    weighted.spectrum = vocoder.spectrum
    assert float(weighted.bin_weight.mean()) == pytest.approx(1.0)
    assert float(weighted.bin_weight[0] / weighted.bin_weight[-1]) == pytest.approx((700 + 8000) / 700)
    assert float(weighted.reconstruct_with_loss(mel, wave[None])[1]) == pytest.approx(0.1 + (math.exp(0.1) - 1), rel=1e-3)
    # decoding from the magnitude alone: PGHI's phase (+ a few Griffin-Lim iterations) rebuilds the
    # clip's spectrum; the predicted phase is ignored (here a wrong one)
    vocoder.spectrum = lambda m: (spec.abs().clamp(min=1e-12).log(), torch.zeros_like(spec.real))
    for init, bound in (("pghi", 0.1), ("predicted", None)):
        out = vocoder.decode(mel, 8000, phase_iterations=8, phase_init=init).sample[:, 0]
        rebuilt = torch.stft(out, 512, 128, window=torch.hann_window(512), center=True, return_complex=True).abs()
        convergence = float((rebuilt - spec.abs()).norm() / spec.abs().norm())
        if bound:
            assert convergence < bound
            pghi_convergence = convergence
    assert pghi_convergence < 0.5 * convergence  # zero phase + the same iterations ends further off
    with pytest.raises(ValueError, match="phase_init"):
        vocoder.decode(mel, 8000, phase_init="zero")


def test_mel_vocoder_trains_and_mel_recipes_decode_through_it(tone_manifest, tmp_path, capsys):
    """recipes/audio/mel_vocoder.yaml trains through the autoencoder objective (loss falls); a mel
    recipe naming it in data.params.vocoder decodes its samples with it, `--vocoder griffin-lim`
    switches back, a missing vocoder is said and Griffin-Lim decodes, a vocoder of other mel
    settings and --vocoder on a waveform model are one-line errors (exit 2)."""
    import json

    from multidiff.train.testing import device_under_test

    mel = ["data.params.sample_rate=8000", "model.params.n_mels=32", "model.params.n_fft=256", "model.params.hop=64"]
    common = [f"data.path={tone_manifest}", f"trainer.device={device_under_test()}", "trainer.tracker=none",
              "trainer.progress=false", "trainer.resume=null", "trainer.preview_every_samples=0"]
    vocoder_run = tmp_path / "vocoder"
    assert main(["train", str(REPO / "recipes/audio/mel_vocoder.yaml"), *common, *mel, "data.params.length=2048",
                 "data.params.split=null", "model.params.dim=32", "model.params.hidden=64", "model.params.layers=2",
                 "optimizer.warmup_samples=0", "optimizer.lr=3e-3", "trainer.batch_size=4", "trainer.duration_samples=240",
                 "trainer.log_every_samples=40", "trainer.checkpoint_every_samples=240", f"trainer.out_dir={vocoder_run}"]) == 0
    losses = [float(r["loss"]) for r in csv.DictReader(open(vocoder_run / "losses.csv"))]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0]
    vocoder = vocoder_run / "checkpoints" / "latest"

    diffusion_run = tmp_path / "mel"
    assert main(["train", str(REPO / "recipes/audio/digits_mel.yaml"), *common, "data.params.sample_rate=8000",
                 "data.params.length=4096", "data.params.n_mels=32", "data.params.n_fft=256", "data.params.hop=64",
                 f"data.params.vocoder={vocoder}", "model.params.channels=[32,48,64]",
                 "model.params.blocks_per_level=1", "model.params.emb_dim=64", "trainer.batch_size=4",
                 "trainer.duration_samples=8", "trainer.log_every_samples=4", "trainer.checkpoint_every_samples=8",
                 f"trainer.out_dir={diffusion_run}", "sampling.steps=2", "sampling.num_samples=2",
                 "sampling.batch_size=2"]) == 0
    ckpt = str(diffusion_run / "checkpoints" / "latest")

    def decoded_by_vocoder(*extra):
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        assert main(["eval", ckpt, "--num", "2", "--steps", "2", "--out", str(out), *extra]) == 0
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
        assert metrics["rms_mean"] > 0
        return metrics["decoded_by_vocoder"]

    assert decoded_by_vocoder() == 1.0
    assert decoded_by_vocoder("--vocoder", "griffin-lim") == 0.0
    capsys.readouterr()
    assert decoded_by_vocoder("--vocoder", str(tmp_path / "nowhere")) == 0.0
    assert "nowhere not found" in capsys.readouterr().err
    assert main(["sample", ckpt, "--num", "1", "--steps", "2", "--out", str(tmp_path / "s"), "--vocoder",
                 str(vocoder)]) == 0
    assert len(list((tmp_path / "s").rglob("*.wav"))) == 1

    other = tmp_path / "vocoder40"  # hears 40 mel bands, the recipe makes 32
    assert main(["train", str(REPO / "recipes/audio/mel_vocoder.yaml"), *common, "data.params.sample_rate=8000",
                 "model.params.n_mels=40", "model.params.n_fft=256", "model.params.hop=64", "data.params.length=2048",
                 "data.params.split=null", "model.params.dim=16", "model.params.hidden=16", "model.params.layers=1",
                 "trainer.batch_size=4", "trainer.duration_samples=4", "trainer.checkpoint_every_samples=4",
                 f"trainer.out_dir={other}"]) == 0
    capsys.readouterr()
    assert main(["eval", ckpt, "--num", "1", "--steps", "2", "--out", str(tmp_path / "e"), "--vocoder",
                 str(other / "checkpoints" / "latest")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_mels 40 vs 32" in err and not (tmp_path / "e").exists()
    waveform_model = str(vocoder_run / "checkpoints" / "latest")  # makes audio, not mel: takes no vocoder
    assert main(["sample", waveform_model, "--vocoder", "griffin-lim", "--out", str(tmp_path / "w")]) == 2
    assert "take no vocoder" in capsys.readouterr().err
