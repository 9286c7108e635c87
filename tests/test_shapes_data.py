"""Procedural shape builder and the mesh data set (cache, bad files, splits, normalisation)."""
import csv
import hashlib
import warnings

import numpy as np
import pytest
import torch
import trimesh

from multidiff.shapes import data as sdata
from multidiff.shapes.builders import PROCEDURAL_CLASSES, build_procedural, procedural_mesh
from multidiff.shapes.data import ShapeDataset, scan_folder


def digest(folder):
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_procedural_builder_is_deterministic_labelled_and_split(tmp_path):
    m1 = build_procedural(tmp_path / "a", per_class=5, seed=7, progress=False)
    m2 = build_procedural(tmp_path / "b", per_class=5, seed=7, progress=False)
    build_procedural(tmp_path / "c", per_class=5, seed=8, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    rows = list(csv.DictReader(open(m1)))
    assert len(rows) == 5 * len(PROCEDURAL_CLASSES)
    assert {r["class"] for r in rows} == set(PROCEDURAL_CLASSES)
    assert all(PROCEDURAL_CLASSES[int(r["label"])] == r["class"] and r["text"] == f"a {r['class']}" for r in rows)
    for c in PROCEDURAL_CLASSES:  # 1 of 5 per class held out
        assert sum(r["split"] == "test" for r in rows if r["class"] == c) == 1
    assert (m2.parent / "classes.json").is_file()


@pytest.mark.parametrize("kind", PROCEDURAL_CLASSES)
def test_procedural_shapes_have_varied_proportions_and_stand_up(kind):
    meshes = [procedural_mesh(kind, np.random.default_rng(k)) for k in range(4)]
    extents = np.array([m.extents for m in meshes])
    assert all(m.area > 0 for m in meshes)
    assert np.ptp(extents, axis=0).max() > 0.05  # random proportions
    if kind in ("table", "chair"):  # y is up: furniture stands on y = 0
        assert all(abs(m.bounds[0, 1]) < 1e-9 for m in meshes)
    if kind == "torus":  # lying flat: thin along y
        assert all(m.extents[1] < m.extents[0] for m in meshes)


@pytest.fixture()
def mesh_folder(tmp_path):
    root = tmp_path / "meshes"
    for cls, make in (("boxes", lambda: trimesh.creation.box((1, 2, 3))), ("balls", lambda: trimesh.creation.icosphere())):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            make().export(root / cls / f"{k}.obj")
    (root / "balls" / "broken.stl").write_bytes(b"solid nonsense\n garbage")
    (root / "boxes" / "empty.obj").write_text("# nothing here\n")
    return root


def test_folder_labels_and_bad_meshes_are_skipped_counted_and_named(mesh_folder):
    rows = scan_folder(mesh_folder)
    assert sorted({(r["class"], r["label"]) for r in rows}) == [("balls", 0), ("boxes", 1)]
    ds = ShapeDataset(mesh_folder, 64, normalize="unit_sphere")
    with pytest.warns(UserWarning, match="skipping unusable mesh") as record:
        items = [ds[k] for k in range(len(ds))]
    messages = " ".join(str(w.message) for w in record)
    assert "broken.stl" in messages and "empty.obj" in messages and "2 skipped so far" in messages
    assert len(items) == 8 and all(it["x"].shape == (64, 3) for it in items)
    assert set(ds.bad_files) == {str(mesh_folder / "balls" / "broken.stl"), str(mesh_folder / "boxes" / "empty.obj")}
    assert "no faces" in ds.bad_files[str(mesh_folder / "boxes" / "empty.obj")]
    for it in items:  # unit sphere per shape
        assert float(it["x"].norm(dim=1).max()) <= 1 + 1e-5


def test_cache_is_written_and_reused(mesh_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = ShapeDataset(mesh_folder / "boxes", 32, normalize="none", cache_dir=cache, pool_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = [ds[k]["x"] for k in range(len(ds))]
    assert len(list(cache.glob("*.npy"))) == 3
    # a second data set reads the pools from the cache: meshes are not opened again
    monkeypatch.setattr(sdata, "load_mesh", lambda p: (_ for _ in ()).throw(AssertionError("mesh read again")))
    ds2 = ShapeDataset(mesh_folder / "boxes", 32, normalize="none", cache_dir=cache, pool_size=100)
    ds2.bad_files = dict(ds.bad_files)
    for k, x in enumerate(first):
        torch.testing.assert_close(ds2[k]["x"], x)


def test_items_are_deterministic_and_change_with_the_epoch(mesh_folder):
    ds = ShapeDataset(mesh_folder / "balls", 50, normalize="none", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ds[1]["x"], ds[1]["x"]
        ds.set_epoch(1)
        c = ds[1]["x"]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert float(a.norm(dim=1).sub(1).abs().max()) < 0.1  # on the (polyhedral) unit sphere


def test_manifest_split_and_global_normalisation(tmp_path):
    manifest = build_procedural(tmp_path / "p", per_class=3, classes=("box", "cone"), test_fraction=0.34, progress=False)
    train = ShapeDataset(manifest, 256, split="train", normalize="global", pool_size=256)
    test = ShapeDataset(manifest, 256, split="test", normalize="global", stats=train.stats, pool_size=256)
    assert len(train) == 4 and len(test) == 2 and train.num_classes == 2
    allp = torch.cat([train[k]["x"] for k in range(len(train))])  # pool_size == num_points: the whole pool
    torch.testing.assert_close(allp.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    assert float(allp.std()) == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(test.stats.center, train.stats.center)
    with pytest.raises(ValueError, match="no mesh files in split 'val'"):
        ShapeDataset(manifest, 16, split="val")
