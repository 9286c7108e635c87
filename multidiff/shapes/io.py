"""3D I/O: meshes in (trimesh), surface points out; normalisation with its inverse;
augmentation; writers for PLY point clouds, PNG sheets of rendered clouds, and meshes
reconstructed from generated clouds.

Shapes: a cloud is (points, 3) or (batch, points, 3) float32, x / y / z, **y up**
(the ShapeNet / PointFlow convention; the procedural builder follows it).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

MESH_EXTENSIONS = (".obj", ".stl", ".ply", ".off", ".glb", ".gltf")
NORMALIZATIONS = ("none", "global", "unit_sphere", "bbox")


class MeshLoadError(DataError):
    """A mesh file that cannot give surface points (unreadable, empty or degenerate); names the file."""


# ------------------------------------------------------------------------------ reading
def load_mesh(path):
    """Read any mesh trimesh knows (obj, stl, ply, off, glb ...) as one ``trimesh.Trimesh``.

    Scenes (glb / multi-object obj) are flattened with their node transforms applied, so the
    result is in the file's own world coordinates. Raises MeshLoadError naming the file when
    it cannot be read or has no faces of positive area.
    """
    import trimesh

    from ..shards import Member

    if isinstance(path, Member):  # a shard member: trimesh reads the bytes, told the format by extension
        member, path = path, path.name
        try:
            source = {"file_obj": member.open(), "file_type": member.ext.lstrip(".")}
        except OSError as err:
            raise MeshLoadError(str(err)) from None
    else:
        path = Path(path)
        if not path.is_file():
            raise MeshLoadError(f"{path}: no such mesh file")
        source = {"file_obj": str(path)}
    try:
        loaded = trimesh.load(**source, force="mesh", process=False)
    except Exception as err:  # noqa: BLE001 - trimesh raises many kinds; all mean "unreadable"
        raise MeshLoadError(f"{path}: cannot read mesh ({type(err).__name__}: {err})") from None
    if isinstance(loaded, trimesh.Scene):  # defensive: force="mesh" normally flattens already
        loaded = loaded.to_geometry() if loaded.geometry else trimesh.Trimesh()
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshLoadError(f"{path}: mesh has no faces (empty file or a point cloud)")
    if not np.isfinite(loaded.vertices).all():
        raise MeshLoadError(f"{path}: mesh has non-finite vertex coordinates")
    if not float(loaded.area) > 0:
        raise MeshLoadError(f"{path}: mesh is degenerate (total surface area 0)")
    return loaded


def probe_mesh(path) -> dict:
    """Packing check of a mesh file: it must load from its own bytes (a .gltf whose buffers sit in
    other files does not) with faces of positive area; MeshLoadError names it otherwise."""
    from ..shards import Member

    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    load_mesh(Member(str(path), 0, len(data), path.suffix.lower(), str(path)))
    return {}


def sample_mesh(mesh, num_points: int, seed: int = 0, *, return_normals: bool = False):
    """Area-weighted uniform samples on a trimesh's surface: (num_points, 3) float32 numpy
    (and (num_points, 3) unit face normals with ``return_normals``). Deterministic in ``seed``."""
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    rng = np.random.default_rng(seed)
    tris = np.asarray(mesh.triangles, dtype=np.float64)  # (faces, 3, 3)
    areas = np.asarray(mesh.area_faces, dtype=np.float64)
    areas = np.where(np.isfinite(areas), areas, 0.0)
    face = rng.choice(len(tris), size=num_points, p=areas / areas.sum())
    # uniform barycentric coordinates: reflect (u, v) outside the triangle back inside
    u, v = rng.random(num_points), rng.random(num_points)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tris[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    pts = pts.astype(np.float32)
    if return_normals:
        return pts, np.asarray(mesh.face_normals, dtype=np.float32)[face]
    return pts


def sample_points(path, num_points: int, seed: int = 0) -> torch.Tensor:
    """(num_points, 3) float32 tensor sampled uniformly by area from the surface of the mesh at
    ``path`` (obj, stl, ply, off, glb; scenes flattened), in the file's own coordinates.

    Raises MeshLoadError naming the file when it cannot be read or has no surface.
    """
    return torch.from_numpy(sample_mesh(load_mesh(path), num_points, seed))


# --------------------------------------------------------------------------- normalising
@dataclass
class Normalization:
    """points_normalized = (points - center) / scale, kept so evaluation can invert it.

    center: (3,) or (batch, 1, 3); scale: scalar-like (1,) or (batch, 1, 1).
    """

    center: torch.Tensor
    scale: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.center.to(points)) / self.scale.to(points)

    def invert(self, points: torch.Tensor) -> torch.Tensor:
        return points * self.scale.to(points) + self.center.to(points)

    def to_json(self) -> dict:
        return {"center": self.center.reshape(-1).tolist(), "scale": float(self.scale.reshape(-1)[0])}

    @classmethod
    def from_json(cls, d: dict) -> Normalization:
        return cls(torch.tensor(d["center"], dtype=torch.float32), torch.tensor([float(d["scale"])]))


def fit_normalization(points: torch.Tensor, mode: str, stats: Normalization | None = None) -> Normalization:
    """The normalisation of one cloud (points, 3) under ``mode``:

    * ``none``: identity.
    * ``global``: the data set's mean and one std over all coordinates (PointFlow, Yang et al.
      2019, normalize_per_shape=False, normalize_std_per_axis=False); ``stats`` must be given
      (see :func:`global_statistics`).
    * ``unit_sphere``: per shape, centroid to the origin and the farthest point at radius 1.
    * ``bbox``: per shape, bounding-box centre to the origin and the longest side to length 2
      (so the shape fits in [-1, 1]^3 and touches it on its longest axis).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    p = points.float()
    if mode == "none":
        return Normalization(torch.zeros(3), torch.ones(1))
    if mode == "global":
        if stats is None:
            raise ValueError("normalize='global' needs the data set's statistics (global_statistics)")
        return stats
    if mode == "unit_sphere":
        center = p.mean(0)
        radius = (p - center).norm(dim=-1).max().clamp(min=1e-8)
        return Normalization(center, radius.reshape(1))
    lo, hi = p.min(0).values, p.max(0).values
    return Normalization((lo + hi) / 2, ((hi - lo).max() / 2).clamp(min=1e-8).reshape(1))


def global_statistics(clouds: Iterable[torch.Tensor]) -> Normalization:
    """PointFlow's global normalisation: per-axis mean over every point of every cloud, and
    one standard deviation over all coordinates after centring. Accumulated cloud by cloud (sums
    in float64), so a generator of clouds is never held in memory at once."""
    count, total, square = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for c in clouds:
        p = c.reshape(-1, 3).double()
        count, total, square = count + len(p), total + p.sum(0), square + p.square().sum(0)
    if count == 0:
        raise ValueError("global_statistics: no points")
    center = total / count
    # unbiased variance over all 3 * count coordinates around their per-axis means
    variance = (square - count * center.square()).sum() / max(3 * count - 1, 1)
    std = variance.clamp(min=0).sqrt().clamp(min=1e-8)
    return Normalization(center.float(), std.float().reshape(1))


# -------------------------------------------------------------------------- augmenting
def augment(points: torch.Tensor, generator: torch.Generator | None = None, *, rotate: bool = True,
            scale_range: tuple[float, float] | None = (0.85, 1.15), up_axis: int = 1) -> torch.Tensor:
    """Random rotation about the up axis (uniform angle) and anisotropic scaling (each axis by
    an independent factor, uniform in ``scale_range``) of a (points, 3 + features) cloud."""
    out = points.clone()
    xyz = out[..., :3]
    if scale_range is not None:
        lo, hi = scale_range
        xyz = xyz * (lo + (hi - lo) * torch.rand(3, generator=generator))
    if rotate:
        a = float(torch.rand((), generator=generator)) * 2 * math.pi
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != up_axis]
        rot = torch.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        xyz = xyz @ rot.T
    out[..., :3] = xyz
    return out


# ------------------------------------------------------------------------------ writing
def save_ply(path, points, colors=None, *, binary: bool = True) -> Path:
    """Write a (points, 3) cloud (optionally (points, 3) uint8 / [0, 1] float colours) as a PLY
    point cloud (vertices only). Binary little-endian by default; ASCII with binary=False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = torch.as_tensor(points).detach().float().cpu().numpy().reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols = None
    if colors is not None:
        cols = np.asarray(torch.as_tensor(colors).detach().cpu().numpy()).reshape(-1, 3)
        if cols.dtype != np.uint8:
            cols = np.clip(np.round(cols.astype(np.float64) * 255), 0, 255).astype(np.uint8)
        if len(cols) != len(pts):
            raise ValueError(f"{path}: {len(cols)} colours for {len(pts)} points")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(pts)}"]
    header += [f"property {'float' if t == '<f4' else 'uchar'} {n}" for n, t in fields]
    header += ["end_header"]
    data = np.empty(len(pts), dtype=fields)
    data["x"], data["y"], data["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if cols is not None:
        data["red"], data["green"], data["blue"] = cols[:, 0], cols[:, 1], cols[:, 2]
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            f.write(data.tobytes())
        else:
            for row in data:
                f.write((" ".join(f"{v:.6g}" if isinstance(v, np.floating) else str(int(v)) for v in row) + "\n")
                        .encode("ascii"))
    os.replace(tmp, path)
    return path


def load_ply_points(path) -> torch.Tensor:
    """The vertices of a PLY file (point cloud or mesh) as a (points, 3) float32 tensor."""
    import trimesh

    try:
        geom = trimesh.load(str(path), process=False)
    except Exception as err:  # noqa: BLE001
        raise MeshLoadError(f"{path}: cannot read PLY ({type(err).__name__}: {err})") from None
    return torch.as_tensor(np.asarray(geom.vertices), dtype=torch.float32)


def render_sheet(clouds, path, *, titles: Sequence[str] | None = None, cols: int = 4, point_size: float = 1.5,
                 up_axis: int = 1, elev: float = 20.0, azim: float = -60.0, dpi: int = 80) -> Path:
    """A PNG grid of 3D scatter renders (matplotlib, headless Agg), one panel per cloud, coloured
    by height, every panel with equal axis scales. clouds: (n, points, 3) or a list of (points, 3)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    clouds = [torch.as_tensor(c).detach().float().cpu().reshape(-1, 3) for c in clouds]
    n = max(len(clouds), 1)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(3 * cols, 3 * rows), dpi=dpi)
    order = [0, 2, up_axis] if up_axis == 1 else [0, 1, 2]  # matplotlib's vertical axis is z
    for k, cloud in enumerate(clouds):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        p = cloud[:, order].numpy()
        finite = np.isfinite(p).all(1)
        p = p[finite]
        if len(p):
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=point_size, c=p[:, 2], cmap="viridis", linewidths=0)
            center = (p.max(0) + p.min(0)) / 2
            half = max(float((p.max(0) - p.min(0)).max()) / 2, 1e-6)
            for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), center):
                setter(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        if titles is not None and k < len(titles):
            ax.set_title(str(titles[k]), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def mesh_from_points(points, *, resolution: int = 64, smoothing: float = 1.0, level: float = 0.5,
                     padding: int = 3):
    """A ``trimesh.Trimesh`` from a surface cloud (points, 3) by marching cubes on a smoothed occupancy grid.

    The points are splatted into a grid of ``resolution`` cells along the longest side. The
    solid is the union of (a) the splatted cells dilated by 3, 5 or 8 median nearest-neighbour
    spacings (the first that seals the surface), with the enclosed interior filled, eroded back
    by the same amount (a morphological closing: closed surfaces become solids), and (b) where
    (a) left nothing, a shell of half a point spacing (at least one cell) around the points, so
    thin parts and open surfaces survive as slabs. It is smoothed with a Gaussian of
    ``smoothing`` cells and meshed at ``level`` by marching cubes (scikit-image when installed,
    trimesh's otherwise), faces oriented outwards, in the cloud's coordinates. Good enough to
    look at and print; not a Poisson reconstruction.
    """
    import trimesh
    from scipy import ndimage
    from scipy.spatial import cKDTree

    p = torch.as_tensor(points).detach().double().cpu().numpy().reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    if len(p) < 4:
        raise ValueError(f"mesh_from_points needs at least 4 finite points, got {len(p)}")
    lo, hi = p.min(0), p.max(0)
    pitch = max(float((hi - lo).max()), 1e-9) / (resolution - 1)
    spacing = float(np.median(cKDTree(p).query(p, k=2)[0][:, 1]))
    grow = max(1, math.ceil(8 * spacing / pitch))
    pad = padding + grow
    dims = np.ceil((hi - lo) / pitch).astype(int) + 1 + 2 * pad
    idx = np.clip(np.round((p - lo) / pitch).astype(int) + pad, 0, dims - 1)
    occ = np.zeros(dims, dtype=bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    core = np.zeros_like(occ)
    for factor in (3, 5, 8):  # the smallest closing that seals the surface (random gaps vary)
        g = max(1, math.ceil(factor * spacing / pitch))
        grown = ndimage.binary_dilation(occ, iterations=g)
        filled = ndimage.binary_fill_holes(grown)
        if filled.sum() > 1.05 * grown.sum():
            core = ndimage.binary_erosion(filled, iterations=g)
            break
    shell = ndimage.distance_transform_edt(~occ) <= max(1.0, 0.5 * spacing / pitch)
    shell &= ~ndimage.binary_dilation(core, iterations=2)  # the shell only where the closing left no solid
    field = ndimage.gaussian_filter((core | shell).astype(np.float32), smoothing)
    try:
        from skimage.measure import marching_cubes

        verts, faces, _, _ = marching_cubes(field, level=level)
        mesh = trimesh.Trimesh(verts, faces, process=True)
    except ImportError:  # pragma: no cover - scikit-image is optional
        mesh = trimesh.voxel.ops.matrix_to_marching_cubes(field > level)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    mesh.apply_scale(pitch)
    mesh.apply_translation(lo - pad * pitch)
    return mesh
