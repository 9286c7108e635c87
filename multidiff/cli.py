"""The ``multidiff`` command line: ``multidiff train | sample | eval | info | export | pack | encode | mesh | complete | results | recipes | demo``.

Each verb lives in its own module with an arguments function (parser) and a run function
(args -> exit code), both named in VERBS; this file only wires them together, importing a verb's
module when it is chosen. Bad input
(multidiff.errors.InputError, a missing file) ends any verb with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import InputError, one_line

VERBS = {
    "train": ("multidiff.train.commands", "train_arguments", "train_run", "train a model from a YAML recipe with key=value overrides"),
    "sample": ("multidiff.train.commands", "sample_arguments", "sample_run", "generate from a checkpoint"),
    "eval": ("multidiff.train.commands", "evaluate_arguments", "evaluate_run", "evaluate a checkpoint's samples with the modality's metrics"),
    "info": ("multidiff.train.commands", "info_arguments", "info_run", "print a checkpoint's config, step, samples seen and sizes"),
    "export": ("multidiff.pipelines.export", "export_arguments", "export_run", "write a checkpoint as a diffusers pipeline folder (save_pretrained)"),
    "pack": ("multidiff.train.pack", "pack_arguments", "pack_run", "write a folder or manifest of audio / video / mesh files as WebDataset tar shards (data.path=SHARDS)"),
    "encode": ("multidiff.train.latents", "encode_arguments", "encode_run", "cache an autoencoder's latents of its data set (latent diffusion)"),
    "mesh": ("multidiff.shapes.mesh", "mesh_arguments", "mesh_run", "surface meshes (OBJ / GLB) from generated point clouds; --held-out scores the method"),
    "complete": ("multidiff.audio.complete", "complete_arguments", "complete_run", "audio continuation / inpainting of held-out clips, scored against the truth"),
    "results": ("multidiff.results", "results_arguments", "results_run", "write the README results tables from result files (--check: verify)"),
    "recipes": ("multidiff.recipes", "recipes_arguments", "recipes_run", "list the packaged starter recipes (multidiff train NAME data.path=DIR)"),
    "demo": ("multidiff.toy.demo", "demo_arguments", "demo_run", "the demo: every sampler on a 2-D mixture (PNG grid), then train + sample an audio model (WAVs)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multidiff", description="Diffusion models over audio, video and 3D shapes.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (*_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\nmultidiff: unknown verb {argv[0]!r}; choose from {', '.join(VERBS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    module_name, add_arguments, run, help_text = VERBS[argv[0]]
    module = importlib.import_module(module_name)
    verb_parser = argparse.ArgumentParser(prog=f"multidiff {argv[0]}", description=help_text)
    getattr(module, add_arguments)(verb_parser)
    args = verb_parser.parse_intermixed_args(argv[1:])  # options may follow key=value overrides
    args.argv = list(argv[1:])  # the command as typed, for result records
    try:
        return int(getattr(module, run)(args) or 0)
    except (InputError, FileNotFoundError) as err:  # bad input: one line naming the file or key, no traceback
        print(f"multidiff {argv[0]}: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
