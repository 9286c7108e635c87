"""A pipeline folder's README.md model card, and uploading a folder to the Hugging Face Hub.

The card has the Hub's YAML front matter (library, license, tags, pipeline tag) and says what the
model generates, how to load it, the sampling defaults, and, for an export from a training
checkpoint (``multidiff export``), the recipe, the data, the samples seen and the measured metrics
of the result files given (``multidiff eval --result``).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

PIPELINE_TAGS = {"audio": "text-to-audio", "video": "text-to-video", "shapes": "text-to-3d", "images": "text-to-image"}


def _front_matter(modality: str, license: str, captions: bool = False) -> str:
    meta = {"library_name": "multidiff", "license": license, "tags": ["diffusion", "multidiff", modality]}
    if captions and modality in PIPELINE_TAGS:  # the Hub's text-to-X tags mean caption-conditioned models
        meta["pipeline_tag"] = PIPELINE_TAGS[modality]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _about(pipe) -> list[str]:
    c = pipe.scheduler.config
    name = type(pipe).__name__
    lines = [f"A {pipe.modality} diffusion model ({type(pipe.backbone).__name__}, "
             f"{sum(p.numel() for p in pipe.backbone.parameters()):,} parameters) as a multidiff `{name}`.", ""]
    shape = " x ".join(map(str, c.sample_shape))
    facts = [f"- sample shape: {shape}"]
    if c.sample_rate:
        facts.append(f"- sample rate: {c.sample_rate} Hz")
    if c.fps:
        facts.append(f"- frame rate: {c.fps:g} fps")
    if c.num_classes:
        names = [n for n in (c.class_names or []) if n]
        facts.append(f"- class-conditional, {c.num_classes} classes" + (f": {', '.join(names)}" if names else ""))
    else:
        facts.append("- unconditional (no class labels)")
    if getattr(pipe, "text_encoder", None) is not None:
        facts.append("- caption-conditional (prompt, negative_prompt)")
    if getattr(pipe, "vae", None) is not None:
        facts.append("- latent diffusion: the vae component decodes the generated latents")
    facts.append(f"- schedule {c.schedule.get('name')}, prediction {c.prediction}; sampling defaults: "
                 f"{c.sampler}, {c.num_inference_steps} steps, {c.spacing} grid, guidance {c.guidance_scale:g}")
    usage = ["", "## Use", "", "```python",
             f"from multidiff.pipelines import {name}", "",
             f'pipe = {name}.from_pretrained("PATH_TO_THIS_FOLDER")',
             "out = pipe(" + ("class_labels=0, " if c.num_classes else "") + "num_samples=4)", "```", "",
             "Any diffusers scheduler can step it: "
             "`pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)`."]
    return lines + facts + usage


def default_card(pipe, license: str = "other") -> str:
    """The card of a pipeline saved from Python: what it generates and how to load it."""
    captions = getattr(pipe, "text_encoder", None) is not None
    return _front_matter(pipe.modality, license, captions) + f"\n# {type(pipe).__name__}\n\n" + "\n".join(_about(pipe)) + "\n"


def export_card(pipe, config: dict, *, checkpoint: str, samples_seen: int, results: list[dict],
                license: str = "other") -> str:
    """The card of ``multidiff export``: the pipeline's facts, then its training and measured results."""
    data = config.get("data", {})
    lines = [f"# {type(pipe).__name__} from {Path(checkpoint).name}", "", *_about(pipe), "",
             "## Training", "",
             f"- recipe: model `{config.get('model', {}).get('name')}`, data `{data.get('name')}` at "
             f"`{data.get('path')}`, objective `{config.get('objective', {}).get('prediction')}` prediction",
             f"- {samples_seen:,} training samples seen, training seed {config.get('trainer', {}).get('seed')}",
             f"- checkpoint: `{checkpoint}`", "",
             "<details><summary>full training config</summary>", "", "```json",
             json.dumps(config, indent=1, sort_keys=True), "```", "</details>", "", "## Measured results", ""]
    if not results:
        lines.append("None given (multidiff export --result FILE adds those of `multidiff eval --result FILE`).")
    for record in results:
        metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in record.get("metrics", {}).items())
        lines += [f"- {metrics}", f"  (`{record.get('command', 'command not recorded')}`)"]
    captions = getattr(pipe, "text_encoder", None) is not None
    return _front_matter(pipe.modality, license, captions) + "\n" + "\n".join(lines) + "\n"


def push_folder(folder, repo_id: str | None = None, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None) -> str:
    """Upload a saved pipeline folder to the Hub; returns the repo id. Needs a token (``token``,
    HF_TOKEN or a login) and network access: without a token it stops with one line."""
    import huggingface_hub

    token = token or huggingface_hub.get_token()
    folder = Path(folder)
    if not token:
        raise ValueError(f"push_to_hub needs a Hugging Face token (token=..., HF_TOKEN, or `hf auth login`) and "
                         f"network access; the pipeline is saved at {folder}")
    repo_id = repo_id or folder.resolve().name
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                          commit_message=commit_message or "Upload multidiff pipeline")
    except Exception as err:  # no network, a refused token: one line, the folder kept
        raise ValueError(f"push_to_hub to {repo_id!r} failed ({type(err).__name__}: {err}); the pipeline is saved "
                         f"at {folder}") from None
    return repo_id
