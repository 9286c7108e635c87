"""Sharded data (multidiff pack, multidiff.shards): the shards are plain WebDataset tars holding the
files' own bytes, items read from them equal items read from the folder, the stream over them is the
same for any process count and worker layout and resumes mid-epoch exactly, every modality trains
from them, and bad input is named in one line."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from test_own_data import _write_audio, _write_meshes, _write_video

from multidiff.cli import main
from multidiff.errors import DataError
from multidiff.manifest import scan_folder, select_split
from multidiff.shards import ShardRows, ShardSet, verify
from multidiff.train.data import make_loader


def _pack(src, out, *extra):
    return main(["pack", str(src), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    _write_audio(root / "clips")
    assert _pack(root / "clips", root / "shards", "--shard-mb", "0.03") == 0
    return root / "clips", root / "shards"


def test_shards_are_webdataset_tars_of_the_files_bytes(audio_shards):
    folder, shards = audio_shards
    header = json.loads((shards / "shards.json").read_text())
    assert header["count"] == 12 and len(header["shards"]) > 1 and header["modality"] == "audio"
    assert header["num_classes"] == 2 and header["classes"] == ["buzz", "tone"]
    assert verify(shards) == 12
    members = []
    for name in header["shards"]:  # each sample: <key>.wav with the file's bytes and <key>.json with its row
        with tarfile.open(shards / name) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = [n.split(".")[0] for n, _ in members]
    assert keys[::2] == keys[1::2] and len(set(keys)) == 12
    files = sorted(folder.rglob("*.wav"))
    for (wav_name, data), (json_name, meta), path in zip(members[::2], members[1::2], files):
        assert wav_name.endswith(".wav") and json_name.endswith(".json")
        assert data == path.read_bytes()
        row = json.loads(meta)
        assert row["path_as_written"] == path.relative_to(folder).as_posix() and row["class"] == path.parent.name
    # the split is the folder's own held-out rule, recorded once
    _, record = select_split(scan_folder(folder, {".wav"}), folder, "train")
    packed = {**header["split_record"], "val_files": json.loads((shards / "val_files.json").read_text())}
    assert packed.pop("val_files_in") == "val_files.json"
    assert packed == {k: v for k, v in record.items() if k != "split"}


def test_items_from_shards_equal_items_from_the_folder(audio_shards):
    from multidiff.audio.data import AudioDataset

    folder, shards = audio_shards
    for split in sorted(ShardSet(shards).splits):
        a = AudioDataset(folder, length=4000, split=split, seed=5)
        b = AudioDataset(shards, length=4000, split=split, seed=5)
        assert isinstance(b.rows, ShardRows) and len(a) == len(b) and a.labels == b.labels
        assert {k: v for k, v in b.split_record.items() if k != "val_files_in"} == {
            k: v for k, v in a.split_record.items() if k != "val_files"}
        assert json.loads(open(b.split_record["val_files_in"]).read()) == a.split_record["val_files"]
        for epoch in (0, 3):
            a.set_epoch(epoch), b.set_epoch(epoch)
            for k in range(len(a)):
                x, y = a[k], b[k]
                assert torch.equal(x["x"], y["x"]) and x["label"] == y["label"] and x["text"] == y["text"]


def test_video_items_from_shards_equal_items_from_the_folder(tmp_path):
    from multidiff.video.data import VideoDataset

    _write_video(tmp_path / "clips")
    assert _pack(tmp_path / "clips", tmp_path / "shards") == 0
    index = ShardSet(tmp_path / "shards").index
    assert np.allclose(index["rate"], 10.0) and (index["duration"] > 1.5).all()  # probed once, when packing
    a = VideoDataset(tmp_path / "clips", 8, 32, fps=10, channels=1, split="train", seed=2)
    b = VideoDataset(tmp_path / "shards", 8, 32, fps=10, channels=1, split="train", seed=2)
    assert len(a) == len(b)
    for k in range(len(a)):
        assert torch.equal(a[k]["x"], b[k]["x"]) and a[k]["label"] == b[k]["label"]
    with pytest.warns(UserWarning, match="skipped 11 video files shorter than 40 frames"), \
            pytest.raises(DataError, match="no video long enough for 40 frames"):
        VideoDataset(tmp_path / "shards", 40, 32, fps=10, split="train")


def test_evaluation_of_a_shard_trained_model_finds_the_judges_beside_the_packed_manifest(tmp_path):
    from multidiff.shards import packed_from

    _write_audio(tmp_path / "clips")
    rows = "path,label\n" + "".join(f"{p.relative_to(tmp_path).as_posix()},{int(p.parent.name == 'tone')}\n"
                                     for p in sorted((tmp_path / "clips").rglob("*.wav")))
    (tmp_path / "m.csv").write_text(rows)
    assert _pack(tmp_path / "m.csv", tmp_path / "shards") == 0
    assert packed_from(tmp_path / "shards") == str(tmp_path / "m.csv")  # where classifier.safetensors would sit
    (tmp_path / "m.csv").unlink()
    assert packed_from(tmp_path / "shards") == tmp_path / "shards"  # moved away: the shards themselves
    assert packed_from(tmp_path / "clips") == tmp_path / "clips"


def test_stream_over_shards_is_the_same_for_any_process_count_workers_and_resume(audio_shards):
    """Process r of P reads its slice of every global batch straight from the shards, decoded in
    DataLoader workers; the slices make up the one-process batch, and a loader started mid-epoch
    at sample s continues the uninterrupted stream exactly."""
    from multidiff.audio.data import AudioDataset

    _, shards = audio_shards
    data = AudioDataset(shards, length=2000, split="train", seed=1)  # 11 clips: batches cross epochs
    def batches(start, rank, world, workers, n):
        it = iter(make_loader(data, seed=7, start=start, batch_size=4, rank=rank, world=world, num_workers=workers))
        return [next(it) for _ in range(n)]

    one = batches(0, 0, 1, 0, 6)
    two = [batches(0, r, 2, 2, 6) for r in range(2)]
    for k in range(6):
        assert torch.equal(one[k]["x"], torch.cat([two[0][k]["x"], two[1][k]["x"]]))
        assert one[k]["position"].tolist() == list(range(4 * k, 4 * k + 4))
    for world in (1, 2):  # resume at sample 12 (mid-epoch 2), any process count
        resumed = [batches(12, r, world, 1, 3) for r in range(world)]
        for k in range(3):
            assert torch.equal(torch.cat([part[k]["x"] for part in resumed]), one[3 + k]["x"])


@pytest.mark.parametrize("recipe, write", [("audio", _write_audio), ("video", _write_video), ("shapes", _write_meshes)])
def test_every_modality_trains_from_shards(recipe, write, tmp_path, capsys):
    write(tmp_path / "data")
    assert _pack(tmp_path / "data", tmp_path / "shards") == 0
    assert f"packed 12 {recipe} files" in capsys.readouterr().out
    out = tmp_path / "run"
    code = main(["train", recipe, f"data.path={tmp_path / 'shards'}", f"trainer.out_dir={out}",
                 "trainer.duration_samples=4", "trainer.batch_size=2", "trainer.preview_every_samples=0",
                 "trainer.compile=false", "trainer.progress=false"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "data_split.json").read_text())
    assert record["files"] == 12 and record["split"] == "train"
    state = json.loads((out / "checkpoints" / "latest" / "state.json").read_text())
    assert state["train"]["samples_seen"] == 4 and state["spec"]["num_classes"] == 2


def test_resume_from_shards_is_exact(audio_shards, tmp_path, capsys):
    from safetensors.torch import load_file

    _, shards = audio_shards
    common = ["audio", f"data.path={shards}", "trainer.batch_size=2", "trainer.preview_every_samples=0",
              "trainer.compile=false", "trainer.progress=false", "trainer.tracker=none",
              "trainer.checkpoint_every_samples=6", "trainer.keep_checkpoints=5", "trainer.duration_samples=14",
              "trainer.cpu_threads=1", "model.params.channels=[16,16,16]",
              "model.params.emb_dim=32", "model.params.blocks_per_level=1"]
    assert main(["train", *common, f"trainer.out_dir={tmp_path / 'a'}"]) == 0
    mid_epoch = tmp_path / "a" / "checkpoints" / "ckpt-000000000006"  # 12 training clips: epoch 0, sample 6
    assert main(["train", *common, f"trainer.out_dir={tmp_path / 'b'}", f"trainer.resume={mid_epoch}"]) == 0, \
        capsys.readouterr().err
    a = load_file(tmp_path / "a" / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_shard_input_is_one_line(audio_shards, tmp_path, capsys):
    folder, shards = audio_shards
    assert _pack(folder, shards) == 2  # never overwrites
    assert "exists and is not empty" in capsys.readouterr().err
    # a broken file is skipped, listed and counted; the rest is packed
    (tmp_path / "src" / "a").mkdir(parents=True)
    for k in range(3):
        (tmp_path / "src" / "a" / f"{k}.wav").write_bytes((folder / "tone" / f"{k}.wav").read_bytes())
    (tmp_path / "src" / "a" / "9.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    assert _pack(tmp_path / "src", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "packed 3 audio files" in out and "skipped 1 unreadable files" in out and "9.wav" in out
    assert json.loads((tmp_path / "out" / "shards.json").read_text())["skipped"] == 1
    assert list(json.loads((tmp_path / "out" / "skipped.json").read_text())) == [str(tmp_path / "src" / "a" / "9.wav")]
    assert not list(tmp_path.glob(".*partial*"))  # packed in a side folder, renamed into place
    # files of two modalities: name one
    (tmp_path / "src" / "a" / "m.obj").write_text("v 0 0 0\n")
    assert _pack(tmp_path / "src", tmp_path / "out2") == 2
    assert "several modalities (audio, shapes); name one with --modality" in capsys.readouterr().err
    # shards of another modality: named
    from multidiff.video.data import VideoDataset

    with pytest.raises(DataError, match=r"the shards hold audio files \(.wav\); this data set reads .mp4"):
        VideoDataset(tmp_path / "out")
    import pickle

    opened = ShardSet(tmp_path / "out")  # as a spawn-started DataLoader worker receives it: the index re-mapped
    again = pickle.loads(pickle.dumps(opened))
    assert isinstance(again.index, np.memmap) and again.member(1) == opened.member(1)
    # a missing shard: named when the data set opens
    (tmp_path / "out" / "shard-000000.tar").rename(tmp_path / "moved.tar")
    with pytest.raises(DataError, match="1 shard files are missing"):
        ShardSet(tmp_path / "out")
    # a shard cut short: that sample is skipped and named as any unreadable file is
    (tmp_path / "moved.tar").rename(tmp_path / "out" / "shard-000000.tar")
    from multidiff.audio.data import AudioDataset

    data = AudioDataset(tmp_path / "out", length=2000, split=None)
    last = ShardSet(tmp_path / "out").index[-1]
    with open(tmp_path / "out" / "shard-000000.tar", "r+b") as f:
        f.truncate(int(last["offset"]) + 100)
    with pytest.warns(UserWarning, match=r"000000002.wav: .*shard-000000.tar: the shard ends before sample 2"):
        item = data[2]
    assert len(data.bad_files) == 1 and item["x"].shape == (1, 2000)
