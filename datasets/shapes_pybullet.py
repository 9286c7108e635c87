"""Index the OBJ meshes PyPI's pybullet ships (pybullet_data): the 1,000 random_urdfs objects and
the named models (duck, teddy, bunny ...), as a manifest with absolute paths into the installed
package (nothing is copied) and a seeded train / test split.

    pip install pybullet
    python datasets/shapes_pybullet.py --out data/shapes_pybullet [--seed 0]
"""
import argparse

from multidiff.shapes.builders import build_pybullet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/shapes_pybullet")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"wrote manifest: {build_pybullet(a.out, test_fraction=a.test_fraction, seed=a.seed)}")


if __name__ == "__main__":
    main()
