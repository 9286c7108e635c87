"""Build the furniture set from Debian's sweethome3d-furniture (apt-get install sweethome3d-furniture):
OBJ models extracted from the *.sh3f libraries, labelled by their catalogue category (categories
with fewer than --min-per-category models left out), with a seeded train / test split and a
manifest (path, label, class, name, id, split).

    python datasets/shapes_furniture.py --out data/shapes_furniture [--min-per-category 10] [--seed 0]
"""
import argparse

from multidiff.shapes.builders import SWEETHOME3D_DIR, build_sweethome3d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/shapes_furniture")
    p.add_argument("--furniture-dir", default=SWEETHOME3D_DIR)
    p.add_argument("--min-per-category", type=int, default=10)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    manifest = build_sweethome3d(a.out, furniture_dir=a.furniture_dir, min_per_category=a.min_per_category,
                                 test_fraction=a.test_fraction, seed=a.seed)
    print(f"wrote manifest: {manifest}")


if __name__ == "__main__":
    main()
