"""Surfaces from point clouds, and how close a surface is to the true one.

Two reconstructions, both marching cubes (scikit-image) on a grid around the cloud:

* ``closing`` (:func:`multidiff.shapes.io.mesh_from_points`): splat, a morphological closing,
  a Gaussian, the 0.5 level set. Needs no normals; rounds edges.
* ``tangent_planes`` (Hoppe et al. 1992, "Surface reconstruction from unorganized points"):
  each point gets a normal from PCA of its neighbours, the normals are oriented consistently by
  propagation along a minimum spanning tree of the neighbour graph (weights 1 - |n_i . n_j|,
  started from the highest point, whose normal points up), and the signed distance of a grid
  node is its distance to the tangent plane of its nearest points (an average over the ``k``
  nearest, weighted by proximity). Keeps flat faces and edges; needs a cloud dense enough that
  neighbours lie on the same sheet.

:func:`surface_metrics` compares two meshes by points sampled on both (in the reference mesh's
units divided by its bounding-box diagonal): symmetric Chamfer distance (mean squared nearest
distance, both ways, summed), normal consistency (mean |cos| between each point's normal and its
nearest neighbour's on the other surface, both ways; 1 = parallel everywhere) and F-score at 1%
of the diagonal (Tatarchenko et al. 2019).
"""
from __future__ import annotations

import math

import numpy as np
import torch

METHODS = ("closing", "tangent_planes")


def _as_numpy(points) -> np.ndarray:
    p = torch.as_tensor(points).detach().double().cpu().numpy().reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    if len(p) < 8:
        raise ValueError(f"a surface needs at least 8 finite points, got {len(p)}")
    return p


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals (n, 3) by PCA of each point's k nearest neighbours, oriented consistently along a
    minimum spanning tree of the neighbour graph (Hoppe et al. 1992), outwards at the highest point."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree
    from scipy.spatial import cKDTree

    n = len(points)
    k = min(k, n - 1)
    _, nbr = cKDTree(points).query(points, k=k + 1)
    nbr = nbr[:, 1:]
    centred = points[nbr] - points[nbr].mean(1, keepdims=True)           # (n, k, 3)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    normals = np.linalg.eigh(cov)[1][:, :, 0]                             # smallest eigenvector
    rows = np.repeat(np.arange(n), k)
    cols = nbr.reshape(-1)
    weight = 1.0 - np.abs(np.einsum("ij,ij->i", normals[rows], normals[cols])) + 1e-6
    graph = coo_matrix((weight, (rows, cols)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)
    tree = minimum_spanning_tree(graph)
    tree = tree + tree.T
    _, component = connected_components(tree, directed=False)
    for c in np.unique(component):
        members = np.flatnonzero(component == c)
        root = members[np.argmax(points[members, 1])]  # the highest point: its normal points up (+y)
        if normals[root, 1] < 0:
            normals[root] *= -1
        order, parent = breadth_first_order(tree, root, directed=False, return_predecessors=True)
        for node in order[1:]:
            if normals[node] @ normals[parent[node]] < 0:
                normals[node] *= -1
    return normals


def tangent_plane_mesh(points, *, resolution: int = 64, k: int = 16, planes: int = 4, padding: int = 3,
                       band: float = 2.0):
    """A ``trimesh.Trimesh`` from a surface cloud by Hoppe et al.'s signed distance to tangent planes."""
    import trimesh
    from scipy.spatial import cKDTree
    from skimage.measure import marching_cubes

    p = _as_numpy(points)
    normals = estimate_normals(p, k)
    lo, hi = p.min(0), p.max(0)
    pitch = max(float((hi - lo).max()), 1e-9) / (resolution - 1)
    dims = np.ceil((hi - lo) / pitch).astype(int) + 1 + 2 * padding
    axes = [lo[i] + (np.arange(dims[i]) - padding) * pitch for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dist, idx = cKDTree(p).query(grid, k=planes)
    w = 1.0 / (dist + 1e-3 * pitch) ** 2
    signed = np.einsum("gkj,gkj->gk", grid[:, None, :] - p[idx], normals[idx])
    field = ((signed * w).sum(1) / w.sum(1)).reshape(dims)
    spacing = float(np.median(cKDTree(p).query(p, k=2)[0][:, 1]))
    near = (dist[:, 0] < band * max(spacing, pitch)).reshape(dims)  # the field means something only near the cloud
    verts, faces, _, _ = marching_cubes(field, level=0.0, mask=near)
    mesh = trimesh.Trimesh(verts * pitch + (lo - padding * pitch), faces, process=True)
    # marching cubes closes the zero set where the field changes sign far from the cloud too: keep the
    # components that lie on the points
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        tree = cKDTree(p)
        keep = [m for m in parts if np.median(tree.query(m.vertices)[0]) < 3 * spacing + pitch]
        mesh = trimesh.util.concatenate(keep or [max(parts, key=lambda m: m.area)])
    return mesh


def reconstruct(points, method: str = "tangent_planes", *, resolution: int = 64):
    """A surface mesh from a cloud (points, 3) by ``method`` (one of METHODS)."""
    if method == "closing":
        from .io import mesh_from_points

        return mesh_from_points(points, resolution=resolution)
    if method == "tangent_planes":
        return tangent_plane_mesh(points, resolution=resolution)
    raise ValueError(f"unknown reconstruction method {method!r}; choose from {', '.join(METHODS)}")


def _sample_with_normals(mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    points, faces = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals[faces])


def surface_metrics(mesh, reference, *, num_points: int = 20000, seed: int = 0, f_threshold: float = 0.01) -> dict:
    """Chamfer distance, normal consistency and F-score of ``mesh`` against ``reference`` (trimesh
    meshes), in units of the reference's bounding-box diagonal."""
    from scipy.spatial import cKDTree

    scale = float(np.linalg.norm(reference.bounds[1] - reference.bounds[0])) or 1.0
    a, na = _sample_with_normals(mesh, num_points, seed)
    b, nb = _sample_with_normals(reference, num_points, seed + 1)
    a, b = a / scale, b / scale
    d_ab, i_ab = cKDTree(b).query(a)
    d_ba, i_ba = cKDTree(a).query(b)
    normal = 0.5 * (np.abs(np.einsum("ij,ij->i", na, nb[i_ab])).mean() + np.abs(np.einsum("ij,ij->i", nb, na[i_ba])).mean())
    precision, recall = float((d_ab < f_threshold).mean()), float((d_ba < f_threshold).mean())
    f_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"chamfer": float((d_ab ** 2).mean() + (d_ba ** 2).mean()), "normal_consistency": float(normal),
            "f_score": f_score}


def held_out_surface_report(manifest, *, split: str = "test", num: int = 32, num_points: int = 2048,
                            methods=METHODS, resolution: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Reconstruct ``num`` held-out shapes of a manifest from ``num_points``-point clouds sampled on their
    meshes, and score each reconstruction against its source mesh (:func:`surface_metrics`); a second,
    independent cloud of the truth is scored as a reference row (the metric's floor at this density)."""
    from ..manifest import read_manifest
    from .io import load_mesh, sample_mesh

    rows = [r for r in read_manifest(manifest) if split is None or r.get("split") == split]
    step = max(1, len(rows) // num)
    rows = rows[::step][:num]
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    iterator = rows
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(rows, desc="reconstructing held-out shapes")
    failures = {m: 0 for m in methods}
    for k, row in enumerate(iterator):
        truth = load_mesh(row["path"])
        cloud = sample_mesh(truth, num_points, seed + k)
        per_method.setdefault("truth", []).append(surface_metrics(truth, truth, seed=seed + 1000 + k))
        for method in methods:
            try:
                mesh = reconstruct(cloud, method, resolution=resolution)
                per_method[method].append({**surface_metrics(mesh, truth, seed=seed + k),
                                           "watertight": float(mesh.is_watertight)})
            except (ValueError, RuntimeError, IndexError):
                failures[method] += 1
    out = {"manifest": str(manifest), "split": split, "shapes": len(rows), "num_points": num_points,
           "resolution": resolution, "methods": {}}
    for method, scores in per_method.items():
        out["methods"][method] = {key: float(np.mean([s[key] for s in scores])) if scores else math.nan
                                  for key in ("chamfer", "normal_consistency", "f_score", "watertight")
                                  if key in (scores[0] if scores else {"chamfer": 0})}
        out["methods"][method]["failed"] = failures.get(method, 0)
    return out


# --------------------------------------------------------------------------- multidiff mesh
MESH_FORMATS = ("obj", "glb", "ply", "stl")


def read_clouds(path) -> list[torch.Tensor]:
    """Clouds from a samples.safetensors (``multidiff sample``), one PLY, or a folder of PLYs."""
    from pathlib import Path

    from ..errors import InputError
    from .io import load_ply_points

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.ply"))
        if not files:
            raise InputError(f"{path}: no .ply files")
        return [load_ply_points(f) for f in files]
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors":
        from ..train.checkpoint import read_tensors

        tensors = read_tensors(path)
        if "samples" not in tensors or tensors["samples"].ndim != 3:
            raise InputError(f"{path}: expected a 'samples' tensor (clouds, points, 3 + features)")
        return list(tensors["samples"][..., :3])
    if path.suffix == ".ply":
        return [load_ply_points(path)]
    raise InputError(f"{path}: expected a samples .safetensors, a .ply or a folder of .ply files")


def mesh_arguments(parser) -> None:
    parser.add_argument("clouds", nargs="?", help="samples.safetensors from multidiff sample, a .ply, or a folder of .ply")
    parser.add_argument("--out", default="outputs/meshes", help="output folder (default: outputs/meshes)")
    parser.add_argument("--format", default="obj", choices=MESH_FORMATS, help="mesh file format (trimesh)")
    parser.add_argument("--method", default="tangent_planes", choices=METHODS,
                        help="tangent_planes (default: closest to the true surface, may be open) or closing "
                             "(watertight, rounder)")
    parser.add_argument("--resolution", type=int, default=64, help="marching-cubes cells along the longest side")
    parser.add_argument("--held-out", default=None, metavar="MANIFEST",
                        help="instead of clouds: reconstruct held-out shapes of MANIFEST from clouds sampled on their "
                             "meshes and score against the source meshes (Chamfer, normal consistency, F-score)")
    parser.add_argument("--split", default="test", help="with --held-out: the manifest split (default: test)")
    parser.add_argument("--num", type=int, default=32, help="with --held-out: how many shapes")
    parser.add_argument("--points", type=int, default=2048, help="with --held-out: points per cloud")
    parser.add_argument("--result", default=None, metavar="FILE", help="with --held-out: also write the report here")


def mesh_run(args) -> int:
    import json
    import shlex
    from pathlib import Path

    from ..errors import InputError

    out = Path(args.out)
    if args.held_out:
        if not Path(args.held_out).is_file():
            raise InputError(f"--held-out: no such manifest: {args.held_out}")
        report = held_out_surface_report(args.held_out, split=args.split, num=args.num, num_points=args.points,
                                         resolution=args.resolution, progress=True)
        from ..results import code_version, write_result

        report.update({"command": "multidiff " + shlex.join(["mesh", *getattr(args, "argv", [])]), **code_version()})
        out.mkdir(parents=True, exist_ok=True)
        write_result(out / "surface.json", report)
        for method, scores in report["methods"].items():
            print(f"{method:<16} " + "  ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        print(f"wrote report: {out / 'surface.json'}")
        if args.result:
            write_result(Path(args.result), report)
            print(f"wrote result: {args.result}")
        return 0
    if not args.clouds:
        raise InputError("give clouds to mesh (samples.safetensors, .ply or a folder) or --held-out MANIFEST")
    clouds = read_clouds(args.clouds)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, cloud in enumerate(clouds):
        mesh = reconstruct(cloud, args.method, resolution=args.resolution)
        path = out / f"{k:03d}.{args.format}"
        mesh.export(str(path))
        written.append(path)
    print(f"meshed {len(written)} clouds with {args.method}; wrote {out}/000.{args.format} ...")
    (out / "meshes.json").write_text(json.dumps({"source": str(args.clouds), "method": args.method,
                                                 "files": [p.name for p in written]}, indent=2))
    return 0
