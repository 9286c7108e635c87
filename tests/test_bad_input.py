"""Bad input, table-driven: every case ends with exit code 2 and one line naming the file, key or
argument at fault, no traceback, and nothing written or changed on disk (docs/reliability.md)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from multidiff.cli import main
from multidiff.train.testing import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "recipes/toy/gmm.yaml")
CKPT = "run/checkpoints/ckpt-000000000256"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A finished toy run (unconditional) and a conditional one, with a samples file of each."""
    root = tmp_path_factory.mktemp("bad-input")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", TOY, *tiny_overrides("run", steps=4)]) == 0
        assert main(["train", TOY, *tiny_overrides("cond", steps=4), "data.params.conditional=true"]) == 0
        assert main(["sample", "run", "--num", "4", "--steps", "4", "--out", "samples", "--device", "cpu"]) == 0
    finally:
        os.chdir(cwd)
    return root


def snapshot(root: Path) -> dict:
    """Every file and folder under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------- the cases
def truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def empty(path):
    Path(path).write_bytes(b"")


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def object_npy(path):
    np.save(path, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)


def nan_npy(path):
    np.save(path, np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))


def samples_without_key(path):
    save_file({"points": torch.zeros(2, 2)}, str(path))


def wav(path, seconds=0.5, rate=8000):
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.3 * np.sin(np.arange(int(seconds * rate)) / 5)).astype("float32"), rate, subtype="PCM_16")


def audio_partly_split(root):
    """A manifest where one row names its split and the next does not: the second would be dropped unseen."""
    wav(root / "aud/a.wav")
    wav(root / "aud/b.wav")
    write(root / "aud/manifest.csv", "path,split\na.wav,train\nb.wav,\n")


def audio_manifest(folder, rows):
    lines = ["path,label,split"] + [f"{name},{label},train" for name, label in rows]
    write(folder / "manifest.csv", "\n".join(lines) + "\n")


def all_bad_audio(root):
    write(root / "aud/a.wav", "not audio")
    write(root / "aud/b.wav", "RIFF....WAVEjunk")
    audio_manifest(root / "aud", [("a.wav", 0), ("b.wav", 1)])


def audio_with_text_label(root):
    wav(root / "aud/a.wav")
    wav(root / "aud/b.wav")
    audio_manifest(root / "aud", [("a.wav", 0), ("b.wav", "seven")])


def video_not_videos(root):
    write(root / "vid/a.mp4", "not a video")
    write(root / "vid/b.mp4", "\x00" * 64)


def video_too_short(root):
    import av

    (root / "vid").mkdir(exist_ok=True)
    with av.open(str(root / "vid/one_frame.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def clips_npz(root, frames, name="clips.npz"):
    """An .npz of uint8 clips (video_clips) with ``frames`` frames each."""
    np.savez(root / name, videos=np.zeros((4, frames, 16, 16), np.uint8), split=np.array(["train"] * 4))


def meshes_all_bad(root):
    write(root / "mesh/a.obj", "v 0 0 0\nf 1 1 1\n")
    write(root / "mesh/b.obj", "this is not a mesh")


AUDIO = ["model.name=audio_unet1d", "model.params={preset: tiny}", "data.name=audio", "data.path=aud/manifest.csv",
         "data.params={sample_rate: 8000, length: 1024, split: train}", "trainer.batch_size=2"]
VIDEO = ["model.name=video_unet3d", "model.params={preset: tiny}", "data.name=video_folder", "data.path=vid",
         "data.params={num_frames: 4, size: 16, split: null}", "trainer.batch_size=2"]
SHAPES = ["model.name=shapes_transformer", "model.params={preset: tiny}", "data.name=shapes", "data.path=mesh",
          "data.params={num_points: 64, split: null}", "trainer.batch_size=2"]


def resume(*extra):
    return ["train", TOY, *tiny_overrides("run", steps=6), "trainer.resume=auto", *extra]


# (id, setup(root) or None, argv, what the message must name)
CASES = [
    # configuration and arguments
    ("unknown-key", None, ["train", TOY, "trainer.batch_sise=3"], "trainer.batch_sise"),
    ("missing-recipe", None, ["train", "nope.yaml"], "nope.yaml"),
    ("missing-data-path", None, ["train", TOY, "data.path=missing.npy", "trainer.out_dir=new"], "data.path"),
    ("nan-lr", None, ["train", TOY, "optimizer.lr=.nan", "trainer.out_dir=new"], "optimizer.lr"),
    ("inf-guidance-config", None, ["train", TOY, "sampling.guidance=.inf", "trainer.out_dir=new"], "sampling.guidance"),
    ("nan-sigma-data", None, ["train", TOY, "objective.schedule.sigma_data=nan", "trainer.out_dir=new"],
     "objective.schedule.sigma_data"),
    ("model-params-inconsistent", lambda r: wav(r / "aud/a.wav"),
     ["train", TOY, *AUDIO, "model.params.channels=[8, 16]", "data.path=aud", "data.params.split=null",
      "trainer.out_dir=new"], "model.params"),
    ("resume-missing", None, ["train", TOY, "trainer.out_dir=new", "trainer.resume=nothere"], "trainer.resume"),
    ("init-from-missing", None, ["train", TOY, "trainer.out_dir=new", "model.init_from=nothere"], "model.init_from"),
    ("guidance-nan", None, ["sample", "run", "--guidance", "nan", "--out", "out"], "--guidance"),
    ("guidance-inf", None, ["sample", "run", "--guidance", "inf", "--out", "out"], "--guidance"),
    ("guidance-interval-nan", None, ["sample", "run", "--guidance-interval", "nan", "1", "--out", "out"],
     "--guidance-interval"),
    ("device-tpu", None, ["sample", "run", "--device", "tpu", "--out", "out"], "--device"),
    ("eval-device-tpu", None, ["eval", "run", "--device", "tpu", "--out", "out"], "--device"),
    ("label-on-unconditional", None, ["sample", "run", "--label", "3", "--out", "out"], "--label"),
    ("label-out-of-range", None, ["sample", "cond", "--label", "99", "--out", "out"], "label 99"),
    ("steps-zero", None, ["sample", "run", "--steps", "0", "--out", "out"], "--steps"),
    ("unknown-sampler", None, ["sample", "run", "--sampler", "nope", "--out", "out"], "--sampler"),
    ("prompt-without-encoder", None, ["sample", "run", "--prompt", "a duck", "--out", "out"], "--prompt"),
    ("no-checkpoint", None, ["sample", "nowhere", "--out", "out"], "nowhere"),
    ("eval-missing-samples", None, ["eval", "run", "--samples", "none.safetensors", "--out", "out"],
     "none.safetensors"),
    ("eval-samples-without-key", lambda r: samples_without_key(r / "bad.safetensors"),
     ["eval", "run", "--samples", "bad.safetensors", "--out", "out"], "bad.safetensors"),
    ("eval-samples-truncated", lambda r: truncate(r / "samples/samples.safetensors"),
     ["eval", "run", "--samples", "samples/samples.safetensors", "--out", "out"], "samples.safetensors"),
    ("eval-missing-reference", None, ["eval", "run", "--reference", "ref.csv", "--out", "out"], "ref.csv"),
    ("eval-split-without-eval-split", None, ["eval", "run", "--split", "test", "--num", "8", "--out", "out"],
     "--split"),
    # checkpoint files
    ("empty-model", lambda r: empty(r / CKPT / "model.safetensors"),
     ["sample", "run", "--no-ema", "--out", "out"], "model.safetensors"),
    ("truncated-model", lambda r: truncate(r / CKPT / "model.safetensors"),
     ["sample", "run", "--no-ema", "--out", "out"], "model.safetensors"),
    ("empty-ema", lambda r: empty(r / CKPT / "ema.safetensors"), ["sample", "run", "--out", "out"], "ema.safetensors"),
    ("truncated-ema-export", lambda r: truncate(r / CKPT / "ema.safetensors", 0.9), ["export", "run", "out"],
     "ema.safetensors"),
    ("truncated-optimizer-resume", lambda r: truncate(r / CKPT / "optimizer.safetensors"), resume(),
     "optimizer.safetensors"),
    ("empty-optimizer-json", lambda r: empty(r / CKPT / "optimizer.json"), resume(), "optimizer.json"),
    ("corrupt-state-info", lambda r: write(r / CKPT / "state.json", "{broken"), ["info", "run"], "state.json"),
    ("corrupt-state-resume", lambda r: write(r / CKPT / "state.json", "{broken"), resume(), "state.json"),
    ("state-not-a-state", lambda r: write(r / CKPT / "state.json", "[1, 2]"), ["sample", "run", "--out", "out"],
     "state.json"),
    ("corrupt-config", lambda r: write(r / CKPT / "config.json", '{"model": {"name": 3}}'),
     ["sample", "run", "--out", "out"], "config.json"),
    ("config-not-a-mapping", lambda r: write(r / CKPT / "config.json", "[]"), ["train", CKPT], "config.json"),
    ("incomplete-checkpoint", lambda r: (r / CKPT / "optimizer.json").unlink(), ["train", CKPT], "optimizer.json"),
    ("resume-changed-model", None, resume("model.params.hidden=48"), "model.params.hidden"),
    ("resume-changed-optimizer", None, resume("optimizer.name=sgd"), "optimizer.name"),
    ("resume-changed-data", None, resume("data.params.conditional=true"), "ckpt-000000000256"),
    ("resume-changed-data-file", lambda r: np.save(r / "pts.npy", np.ones((8, 2), np.float32)),
     resume("data.path=pts.npy"), "data.path"),
    # data files
    ("object-npy", lambda r: object_npy(r / "obj.npy"), ["train", TOY, "data.path=obj.npy", "trainer.out_dir=new"],
     "obj.npy"),
    ("nan-npy", lambda r: nan_npy(r / "nan.npy"), ["train", TOY, "data.path=nan.npy", "trainer.out_dir=new"],
     "nan.npy"),
    ("garbage-csv", lambda r: write(r / "pts.csv", "a,b\nc,d\n"),
     ["train", TOY, "data.path=pts.csv", "trainer.out_dir=new"], "pts.csv"),
    ("audio-every-file-bad", all_bad_audio, ["train", TOY, *AUDIO, "trainer.out_dir=new"], "manifest.csv"),
    ("audio-text-label", audio_with_text_label, ["train", TOY, *AUDIO, "trainer.out_dir=new"], "'label'"),
    ("audio-manifest-no-path", lambda r: write(r / "aud/manifest.csv", "file,label\na.wav,0\n"),
     ["train", TOY, *AUDIO, "trainer.out_dir=new"], "manifest.csv"),
    ("audio-bad-jsonl", lambda r: write(r / "aud/manifest.jsonl", '{"path": "a.wav"}\n{oops\n'),
     ["train", TOY, *AUDIO, "data.path=aud/manifest.jsonl", "trainer.out_dir=new"], "manifest.jsonl:2"),
    ("audio-manifest-partly-split", audio_partly_split,
     ["train", TOY, *AUDIO, "trainer.out_dir=new"], "b.wav"),
    ("video-not-videos", video_not_videos, ["train", TOY, *VIDEO, "trainer.out_dir=new"], "vid"),
    ("video-one-frame", video_too_short, ["train", TOY, *VIDEO, "trainer.out_dir=new"], "vid"),
    ("video-npz-one-frame", lambda r: clips_npz(r, 1),
     ["train", TOY, "model.name=video_unet3d", "model.params={preset: tiny}", "data.name=video_clips",
      "data.path=clips.npz", "data.params={num_frames: 4}", "trainer.out_dir=new"], "clips.npz"),
    ("video-npz-flat", lambda r: np.savez(r / "flat.npz", videos=np.zeros((4, 16, 16), np.uint8)),
     ["train", TOY, "model.name=video_unet3d", "model.params={preset: tiny}", "data.name=video_clips",
      "data.path=flat.npz", "data.params={}", "trainer.out_dir=new"], "flat.npz"),
    ("meshes-all-bad", meshes_all_bad, ["train", TOY, *SHAPES, "trainer.out_dir=new"], "mesh"),
]


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


@pytest.mark.parametrize("setup, argv, named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_writes_nothing(workspace, tmp_path, capsys, setup, argv, named):
    root = tmp_path / "ws"
    shutil.copytree(workspace, root, symlinks=True)
    if setup is not None:
        setup(root)
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = run_main(argv)  # an exception here is a traceback for the user: the test fails on it
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert named in last, last
    assert last.startswith(f"multidiff {argv[0]}:"), last
    assert snapshot(root) == before, "bad input changed files"


def test_bad_input_through_the_installed_command(workspace, tmp_path):
    """The same promise through a real process: the console script prints no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv, named in ((["sample", str(workspace / "run"), "--device", "tpu"], "--device"),
                        (["train", TOY, "optimizer.lr=.nan"], "optimizer.lr")):
        proc = subprocess.run([sys.executable, "-m", "multidiff.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and named in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.iterdir())


def test_nan_samples_are_refused(workspace, tmp_path, capsys, monkeypatch):
    """A model that produces NaN: sample and eval exit 1 and write nothing."""
    import multidiff.train.sampling as sampling

    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: real(*a, **k) * float("nan"))
    for verb in ("sample", "eval"):
        out = tmp_path / verb
        assert main([verb, str(workspace / "run"), "--num", "4", "--steps", "2", "--out", str(out)]) == 1
        assert "contain NaN" in capsys.readouterr().err
        assert not out.exists()


def test_truncated_wav_is_named_and_skipped(tmp_path):
    """A WAV whose header promises more audio than the file holds is an error naming the file (the
    decoder alone would read the part that is there); a data set skips and counts it."""
    from multidiff.audio.data import AudioDataset
    from multidiff.audio.io import AudioDecodeError, load_audio

    wav(tmp_path / "good.wav")
    wav(tmp_path / "cut.wav")
    truncate(tmp_path / "cut.wav", 0.3)
    with pytest.raises(AudioDecodeError, match="cut.wav: truncated WAV"):
        load_audio(tmp_path / "cut.wav")
    assert load_audio(tmp_path / "good.wav")[0].shape == (1, 4000)
    audio_manifest(tmp_path, [("cut.wav", 0), ("good.wav", 1)])
    data = AudioDataset(tmp_path / "manifest.csv", sample_rate=8000, length=1024, random_crop=False)
    with pytest.warns(UserWarning, match="cut.wav"):
        item = data[0]
    assert item["label"] == 1 and list(data.bad_files) == [str(tmp_path / "cut.wav")]


def test_pipeline_never_unpickles_a_bin(workspace, tmp_path):
    """from_pretrained loads safetensors only: a crafted .bin beside (or instead of) the weights is never
    unpickled, through our loader, diffusers' model loader or the use_safetensors=False switch."""
    from multidiff.audio.unet1d import UNet1D
    from multidiff.pipelines import AudioDiffusionPipeline, MultidiffPipeline
    from multidiff.train.config import load_config
    from multidiff.train.registry import DataSpec

    model = UNet1D(channels=(8, 16), factors=(2,), blocks_per_level=1, attention_levels=(), emb_dim=16)
    spec = DataSpec((1, 64), 0, "audio", {"sample_rate": 8000})
    from multidiff.pipelines.base import MultidiffSchedulerConfig

    pipe = AudioDiffusionPipeline(model, MultidiffSchedulerConfig.from_training(load_config(None), spec))
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    for load in (lambda: MultidiffPipeline.from_pretrained(folder),
                 lambda: UNet1D.from_pretrained(folder / "unet"),
                 lambda: UNet1D.from_pretrained(folder / "unet", use_safetensors=False),
                 lambda: MultidiffPipeline.from_pretrained(folder, use_safetensors=False)):
        with pytest.raises((OSError, ValueError, EnvironmentError)):
            load()
        assert not marker.exists()
    json.loads((folder / "model_index.json").read_text())  # the folder itself is untouched
