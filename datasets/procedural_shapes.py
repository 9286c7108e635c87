"""Build the procedural shape set: box, sphere, cylinder, cone, torus, capsule, table and chair
meshes from trimesh primitives with random proportions, labelled, y up, with a train / test
split and a manifest (path, label, class, split, seed). Deterministic in --seed.

    python datasets/procedural_shapes.py --out data/shapes_procedural [--per-class 200] [--seed 0]
"""
import argparse

from multidiff.shapes.builders import PROCEDURAL_CLASSES, build_procedural


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/shapes_procedural")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--classes", nargs="*", default=list(PROCEDURAL_CLASSES), choices=list(PROCEDURAL_CLASSES))
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--format", default="ply", choices=["ply", "obj", "stl", "off", "glb"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    manifest = build_procedural(a.out, per_class=a.per_class, classes=a.classes, seed=a.seed,
                                test_fraction=a.test_fraction, file_format=a.format)
    print(f"wrote manifest: {manifest}")


if __name__ == "__main__":
    main()
