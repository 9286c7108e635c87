"""``multidiff export CHECKPOINT FOLDER``: a trained recipe checkpoint as a pipeline folder.

The weights are the EMA's when the checkpoint has them (``--no-ema``: the trained ones), as
``multidiff sample`` uses; the schedule, prediction type, sample shape, classes and the
recipe's sampling settings go to the scheduler component, so the pipeline's defaults are
``multidiff sample``'s and, for the same seed, its samples are the same. A latent diffusion
checkpoint also takes its autoencoder along (component ``vae``), so the pipeline returns
decoded audio / video.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import MODALITIES, MultidiffPipeline, MultidiffSchedulerConfig


def export_pipeline(checkpoint, out, *, use_ema: bool = True, results=(), license: str = "other") -> MultidiffPipeline:
    """Write the pipeline of a checkpoint (folder, ``latest`` link or run out_dir) to ``out``; returns it.

    The pipeline class follows the backbone's modality (audio, video, shapes); ValueError for
    any other (e.g. the toy MLP). The folder's README.md model card holds the recipe, the data,
    the samples seen and the metrics of ``results`` (``multidiff eval --result`` files), under ``license``.
    """
    return _export(checkpoint, out, use_ema, results, license)[0]


def _read_results(paths) -> list[dict]:
    import json

    records = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"--result: no result file {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"--result {path}: not a JSON result file ({err})") from None
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            raise ValueError(f"--result {path}: no 'metrics' mapping (write one with multidiff eval --result)")
        records.append(record)
    return records


def _export(checkpoint, out, use_ema: bool, results=(), license: str = "other"):
    """(pipeline, checkpoint folder, weights file)."""
    from ..train.registry import MODELS
    from ..train.trainer import load_for_sampling
    from .card import export_card

    records = _read_results(results)  # before minutes of loading
    model, config, spec, state, folder, weights = load_for_sampling(checkpoint, "cpu", use_ema)
    modality = MODELS[config.model.name].modality
    cls = MODALITIES.get(modality) or MODALITIES.get(spec.modality)
    if cls is None:
        raise ValueError(f"{folder}: no pipeline for the {modality!r} backbone {config.model.name!r}; "
                         f"pipelines exist for {sorted(MODALITIES)}")
    backbone, text_encoder = (model.backbone, model.text_encoder) if hasattr(model, "text_encoder") else (model, None)
    if text_encoder is not None and not hasattr(text_encoder, "save_pretrained"):
        raise ValueError(f"{folder}: its {type(text_encoder).__name__} text encoder cannot be stored in a pipeline "
                         f"folder yet (the text_encoder component needs save_pretrained / from_pretrained: a diffusers "
                         f"ModelMixin or a transformers model)")
    vae = None
    if spec.modality == "latent":  # the autoencoder that decodes the latents travels with the pipeline
        from ..train.latents import load_autoencoder

        vae = load_autoencoder(spec.meta["autoencoder"])
    pipe = cls(backbone, MultidiffSchedulerConfig.from_training(config, spec), text_encoder=text_encoder, vae=vae)
    card = export_card(pipe, config.to_dict(), checkpoint=str(folder), samples_seen=int(state.get("train", {}).get("samples_seen", 0)),
                       results=records, license=license)
    pipe.save_pretrained(out, model_card=card)
    return pipe, folder, weights


def export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, its 'latest' link, or a run's out_dir")
    parser.add_argument("out", help="the pipeline folder to write (created; files in it are replaced)")
    parser.add_argument("--no-ema", action="store_true", help="export the trained weights instead of the EMA")
    parser.add_argument("--result", action="append", default=[], metavar="FILE",
                        help="a multidiff eval --result file whose metrics go into the model card (repeatable)")
    parser.add_argument("--license", default="other", help="the model card's license field (default: other)")


def export_run(args: argparse.Namespace) -> int:
    try:
        pipe, folder, weights = _export(args.checkpoint, args.out, not args.no_ema, args.result, args.license)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"multidiff export: {e}", file=sys.stderr)
        return 2
    name = type(pipe).__name__
    print(f"exported {folder} ({weights.name}) as {name}")
    print(f"wrote pipeline: {Path(args.out)}")
    print(f"load with: from multidiff.pipelines import {name}; pipe = {name}.from_pretrained({str(args.out)!r})")
    return 0
