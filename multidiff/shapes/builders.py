"""Builders of shape data sets (run by the scripts in datasets/): procedural shapes from trimesh
primitives with random proportions, labelled, written as meshes plus a manifest.

Conventions: y is up, shapes stand on y = 0 ... h or are centred at the origin, sizes of
order 1 (the data set's normalisation takes care of scale). Deterministic: shape k of class c
is drawn from a generator seeded by (seed, c, k), so the same seed gives identical files.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROCEDURAL_CLASSES = ("box", "sphere", "cylinder", "cone", "torus", "capsule", "table", "chair")


def _y_up(mesh):
    """trimesh makes cylinders / cones / capsules / tori along z: turn z into y."""
    import trimesh

    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    return mesh


def _box(extents, center):
    import trimesh

    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def procedural_mesh(kind: str, rng: np.random.Generator):
    """One ``trimesh.Trimesh`` of class ``kind`` (see PROCEDURAL_CLASSES) with random proportions."""
    import trimesh

    u = rng.uniform
    if kind == "box":
        return _box(u(0.4, 1.2, size=3), (0, 0, 0))
    if kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=u(0.35, 0.65))
    if kind == "cylinder":
        return _y_up(trimesh.creation.cylinder(radius=u(0.15, 0.5), height=u(0.5, 1.4), sections=48))
    if kind == "cone":
        return _y_up(trimesh.creation.cone(radius=u(0.25, 0.6), height=u(0.5, 1.4), sections=48))
    if kind == "torus":
        major = u(0.35, 0.6)
        return _y_up(trimesh.creation.torus(major_radius=major, minor_radius=major * u(0.15, 0.45), major_sections=48,
                                            minor_sections=16))  # lying flat, axis up
    if kind == "capsule":
        return _y_up(trimesh.creation.capsule(height=u(0.3, 1.0), radius=u(0.15, 0.4), count=[24, 24]))
    if kind == "table":
        w, d, h = u(0.8, 1.6), u(0.5, 1.0), u(0.5, 0.9)
        top, leg = u(0.04, 0.1), u(0.05, 0.12)
        inset = u(0.0, 0.1)
        parts = [_box((w, top, d), (0, h - top / 2, 0))]
        for sx in (-1, 1):
            for sz in (-1, 1):
                parts.append(_box((leg, h - top, leg), (sx * (w / 2 - leg / 2 - inset), (h - top) / 2,
                                                        sz * (d / 2 - leg / 2 - inset))))
        return trimesh.util.concatenate(parts)
    if kind == "chair":
        w, d, seat_h = u(0.4, 0.7), u(0.4, 0.7), u(0.35, 0.55)
        seat, leg, back_h, back_t = u(0.04, 0.09), u(0.04, 0.08), u(0.35, 0.7), u(0.03, 0.08)
        parts = [_box((w, seat, d), (0, seat_h - seat / 2, 0)),
                 _box((w, back_h, back_t), (0, seat_h + back_h / 2, -d / 2 + back_t / 2))]
        for sx in (-1, 1):
            for sz in (-1, 1):
                parts.append(_box((leg, seat_h - seat, leg), (sx * (w / 2 - leg / 2), (seat_h - seat) / 2,
                                                              sz * (d / 2 - leg / 2))))
        return trimesh.util.concatenate(parts)
    raise ValueError(f"unknown procedural shape {kind!r}; known: {PROCEDURAL_CLASSES}")


def build_procedural(out_dir, *, per_class: int = 200, classes: Sequence[str] = PROCEDURAL_CLASSES, seed: int = 0,
                     test_fraction: float = 0.2, file_format: str = "ply", progress: bool = True) -> Path:
    """Write ``per_class`` meshes of each class to ``out_dir/<class>/<k>.<format>`` and a manifest
    (``manifest.csv``: path, label, class, split, seed) plus ``classes.json``. The last
    ``round(test_fraction * per_class)`` shapes of each class form the "test" split. Returns the
    manifest path. Deterministic in ``seed``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_test = int(round(test_fraction * per_class))
    jobs = [(c, k) for c in range(len(classes)) for k in range(per_class)]
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="procedural shapes")
    rows = []
    for c, k in it:
        name = classes[c]
        rng = np.random.default_rng([seed, c, k])
        mesh = procedural_mesh(name, rng)
        rel = f"{name}/{k:05d}.{file_format}"
        (out / name).mkdir(exist_ok=True)
        mesh.export(out / rel)
        rows.append({"path": rel, "label": c, "class": name, "split": "test" if k >= per_class - n_test else "train",
                     "seed": seed, "text": f"a {name}"})
    return _write_manifest(out, rows, classes)


# ------------------------------------------------------------------ meshes from package registries
def _properties(text: str) -> dict[str, str]:
    """A Java .properties file (key=value lines, # comments, backslash continuations) as a dict."""
    out, pending = {}, ""
    for line in text.splitlines():
        line = pending + line.strip()
        pending = ""
        if not line or line.startswith(("#", "!")):
            continue
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().encode("latin-1", "ignore").decode("unicode_escape", "ignore")
    return out


SWEETHOME3D_DIR = "/usr/share/sweethome3d/furniture"


def sweethome3d_catalog(furniture_dir=SWEETHOME3D_DIR) -> list[dict]:
    """Models of Debian's sweethome3d-furniture libraries (``*.sh3f`` zip archives): one dict per
    model with library, id, name, category, model (path inside the archive), sorted by id."""
    import zipfile

    rows = []
    for lib in sorted(Path(furniture_dir).glob("*.sh3f")):
        with zipfile.ZipFile(lib) as z:
            props = _properties(z.read("PluginFurnitureCatalog.properties").decode("latin-1"))
        for key, model in props.items():
            if not key.startswith("model#"):
                continue
            n = key.split("#", 1)[1]
            rows.append({"library": lib.name, "id": props.get(f"id#{n}", f"{lib.stem}#{n}"),
                         "name": props.get(f"name#{n}", ""), "category": props.get(f"category#{n}", ""),
                         "model": model.lstrip("/")})
    return sorted(rows, key=lambda r: (r["library"], r["id"]))


def build_sweethome3d(out_dir, *, furniture_dir=SWEETHOME3D_DIR, min_per_category: int = 10, test_fraction: float = 0.2,
                      seed: int = 0, progress: bool = True) -> Path:
    """Extract the sweethome3d-furniture OBJ models (with their materials) to ``out_dir/<library>/...``
    and write ``manifest.csv`` (path, label, class = catalogue category, name, split). Categories
    with fewer than ``min_per_category`` models are left out; labels index the sorted kept
    categories; the test split is a seeded ``test_fraction`` of each category."""
    import zipfile

    if not Path(furniture_dir).is_dir():
        raise FileNotFoundError(f"{furniture_dir} does not exist: apt-get install sweethome3d-furniture")
    catalog = sweethome3d_catalog(furniture_dir)
    counts: dict[str, int] = {}
    for r in catalog:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    classes = sorted(c for c, n in counts.items() if c and n >= min_per_category)
    catalog = [r for r in catalog if r["category"] in classes]
    out = Path(out_dir)
    it = catalog
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(catalog, desc="sweethome3d models")
    rows, archives = [], {}
    try:
        for r in it:
            z = archives.get(r["library"]) or archives.setdefault(
                r["library"], zipfile.ZipFile(Path(furniture_dir) / r["library"]))
            folder = r["model"].rsplit("/", 1)[0] + "/"
            for member in z.namelist():  # the model's folder: OBJ, MTL and textures
                if member.startswith(folder) and not member.endswith("/"):
                    target = out / Path(r["library"]).stem / member
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(z.read(member))
            rows.append({"path": f"{Path(r['library']).stem}/{r['model']}", "label": classes.index(r["category"]),
                         "class": r["category"], "name": r["name"], "id": r["id"],
                         "text": f"{r['name']}, {r['category']}".lower()})
    finally:
        for z in archives.values():
            z.close()
    rng = np.random.default_rng(seed)
    for c in classes:
        members = [k for k, row in enumerate(rows) if row["class"] == c]
        test = set(rng.permutation(members)[: int(round(test_fraction * len(members)))].tolist())
        for k in members:
            rows[k]["split"] = "test" if k in test else "train"
    return _write_manifest(out, rows, classes)


def build_pybullet(out_dir, *, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A manifest (no copies: absolute paths into the installed package) of the OBJ meshes PyPI's
    pybullet ships in pybullet_data: the 1,000 ``random_urdfs`` objects (label 0, "random") and the
    named models (duck, teddy, bunny ... label 1, "named"); seeded train / test split."""
    try:
        import pybullet_data
    except ImportError:
        raise ImportError("build_pybullet needs PyPI's pybullet (pip install pybullet)") from None
    root = Path(pybullet_data.getDataPath())
    random_objs = sorted((root / "random_urdfs").glob("*/*.obj"))
    named = sorted(p for p in root.glob("*.obj")) + sorted(p for p in root.glob("*/*.obj")
                                                          if p.parent.name != "random_urdfs" and "random_urdfs" not in p.parts)
    named = [p for p in dict.fromkeys(named) if "random_urdfs" not in p.parts]
    rows = [{"path": str(p), "label": 0, "class": "random"} for p in random_objs]
    rows += [{"path": str(p), "label": 1, "class": "named", "name": p.stem} for p in named]
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(len(rows))[: int(round(test_fraction * len(rows)))].tolist())
    for k, row in enumerate(rows):
        row.setdefault("name", Path(row["path"]).stem)
        row["split"] = "test" if k in test else "train"
    return _write_manifest(Path(out_dir), rows, ["random", "named"])


def _write_manifest(out: Path, rows: list[dict], classes: Sequence[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "classes.json").write_text(json.dumps(list(classes), indent=1))
    return manifest
