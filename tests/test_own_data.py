"""Your own data: a plain folder of each modality trains through a packaged starter recipe, with a
held-out split made by file-name hash and recorded in the run folder."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from multidiff.cli import main
from multidiff.errors import DataError
from multidiff.manifest import MIN_FILES_TO_HOLD_OUT, held_out_split, scan_folder, select_split
from multidiff.recipes import packaged_recipes


def _rows(names, root="/data"):
    return [{"path": f"{root}/{n}"} for n in names]


def test_held_out_split_is_a_stable_tenth():
    names = [f"speaker{k // 50}/clip{k:04d}.wav" for k in range(2000)]
    splits = [held_out_split(n) for n in names]
    assert splits == [held_out_split(n) for n in names]  # the same on every call and machine
    share = splits.count("val") / len(splits)
    assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 2000), share  # binomial spread
    assert set(splits) == {"train", "val"}


def test_a_folder_without_split_gets_one_and_a_record(tmp_path):
    rows = _rows([f"a/{k}.wav" for k in range(60)], tmp_path)
    train, record = select_split(rows, tmp_path, "train")
    val, _ = select_split(rows, tmp_path, "val")
    assert len(train) + len(val) == 60 and len(val) == record["val"] > 0
    assert {r["path"] for r in train}.isdisjoint({r["path"] for r in val})
    assert all(r["split"] == "train" for r in train)
    assert record["val_files"] == sorted(r["path"][len(str(tmp_path)) + 1:] for r in val)
    assert record["source"] == str(tmp_path) and record["files"] == 60
    # adding files never moves a file to the other split
    more, _ = select_split(_rows([f"a/{k}.wav" for k in range(200)], tmp_path), tmp_path, "train")
    assert {r["path"] for r in train} <= {r["path"] for r in more}


def test_split_rules_named_data_and_small_folders():
    named = [{"path": "/d/x.wav", "split": "test"}, {"path": "/d/y.wav", "split": "train"}]
    rows, record = select_split(named, "/d/m.csv", "train")
    assert [r["path"] for r in rows] == ["/d/y.wav"] and record is None
    small = _rows([f"{k}.wav" for k in range(MIN_FILES_TO_HOLD_OUT - 1)])
    rows, record = select_split(small, "/data", "train")
    assert len(rows) == len(small) and record["val"] == 0 and record["held_out_fraction"] == 0.0
    with pytest.raises(DataError, match=r"1 of 3 rows have no 'split' value \(the first: /d/z.wav\)"):
        select_split([*named, {"path": "/d/z.wav", "split": ""}], "/d/m.csv", "train")
    assert select_split(small, "/data", None) == (small, None)


def test_sidecar_captions_and_class_folders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.wav").write_bytes(b"")
    (tmp_path / "dog" / "a.txt").write_text("a dog\n barking ")
    rows = scan_folder(tmp_path, {".wav"})
    assert [(r["class"], r["label"], r.get("text")) for r in rows] == [("cat", 0, None), ("dog", 1, "a dog barking")]
    (tmp_path / "dog" / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="a.txt: caption file is not UTF-8"):
        scan_folder(tmp_path, {".wav"})


def test_recipes_lists_the_packaged_starters(capsys):
    assert {"audio", "video", "shapes"} <= set(packaged_recipes())
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("audio", "video", "shapes"))
    assert main(["recipes", "shapes"]) == 0 and "name: shapes_transformer" in capsys.readouterr().out
    assert main(["train", "audoi"]) == 2
    assert "did you mean 'audio'?" in capsys.readouterr().err
    assert main(["train", "audio"]) == 2  # no data.path: named
    assert "data.path" in capsys.readouterr().err


# ------------------------------------------------------------------ each modality's own folder
def _write_audio(folder):
    import soundfile as sf

    t = np.arange(8000) / 16000
    for cls, shape in (("tone", np.sin), ("buzz", lambda v: np.sign(np.sin(v)))):
        (folder / cls).mkdir(parents=True)
        for k in range(6):
            sf.write(folder / cls / f"{k}.wav", 0.3 * shape(2 * np.pi * (200 + 40 * k) * t), 16000)


def _write_video(folder):
    from multidiff.video.io import write_gif

    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    for cls, speed in (("left", -1.5), ("right", 1.5)):
        (folder / cls).mkdir(parents=True)
        for k in range(6):
            centre = 20 + speed * (torch.arange(18.0)[:, None, None] - 9) + k
            frames = ((xx - centre) ** 2 + (yy - 20) ** 2 < 30).float() * 2 - 1
            write_gif(folder / cls / f"{k}.gif", frames[None].expand(3, -1, -1, -1), fps=10)


def _write_meshes(folder):
    import trimesh

    for cls in ("box", "ball"):
        (folder / cls).mkdir(parents=True)
        for k in range(6):
            mesh = (trimesh.creation.box(extents=(1, 1 + 0.1 * k, 1)) if cls == "box"
                    else trimesh.creation.icosphere(radius=0.5 + 0.05 * k))
            mesh.export(folder / cls / f"{k}.obj")
        (folder / cls / "0.txt").write_text(f"a {cls}")


@pytest.mark.parametrize("recipe, write", [("audio", _write_audio), ("video", _write_video), ("shapes", _write_meshes)])
def test_own_folder_trains_with_the_starter_recipe(recipe, write, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    write(data)
    code = main(["train", recipe, f"data.path={data}", f"trainer.out_dir={out}", "trainer.duration_samples=4",
                 "trainer.batch_size=2", "trainer.preview_every_samples=0", "trainer.compile=false",
                 "trainer.progress=false"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "data_split.json").read_text())
    assert record["files"] == 12 and record["train"] + record["val"] == 12 == record["train"] + len(record["val_files"])
    assert "held out as 'val' by file-name hash" in capsys.readouterr().out
    state = json.loads((out / "checkpoints" / "latest" / "state.json").read_text())
    assert state["train"]["samples_seen"] == 4 and state["spec"]["num_classes"] == 2  # classes from sub-folders
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["path"] == str(data)


def test_a_manifest_without_a_split_column_is_split_too(tmp_path, capsys):
    _write_audio(tmp_path / "clips")
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text"])
        for p in sorted((tmp_path / "clips").rglob("*.wav")):
            writer.writerow([p.relative_to(tmp_path).as_posix(), p.parent.name])
    from multidiff.audio.data import AudioDataset

    train = AudioDataset(tmp_path / "clips.csv", split="train")
    val = AudioDataset(tmp_path / "clips.csv", split="val")
    assert len(train) + len(val) == 12 and train.split_record["val"] == len(val) >= 1
    assert train.split_record["val_files"] == sorted(r["path"][len(str(tmp_path)) + 1:] for r in val.rows)


def test_a_manifest_split_does_not_depend_on_where_the_manifest_sits(tmp_path):
    """Absolute paths in a manifest hash as written: the same rows from two folders split alike."""
    lines = "path\n" + "".join(f"/corpus/clips/{k:03d}.wav\n" for k in range(80))
    for where in ("a", "b/c/d"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "m.csv").write_text(lines)
    from multidiff.manifest import read_manifest

    splits = [select_split(read_manifest(tmp_path / w / "m.csv"), tmp_path / w / "m.csv", "val")[1]["val_files"]
              for w in ("a", "b/c/d")]
    assert splits[0] == splits[1] and splits[0] and splits[0][0].startswith("/corpus/clips/")
