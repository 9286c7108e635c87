"""The images modality (multidiff.images), added through the modality contract alone: its backbone,
data, trainer run, previews, evaluation and pipeline; and train/ + core/ name no modality."""
import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from multidiff.cli import main
from multidiff.images.unet2d import UNet2D, unet2d_tiny

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/images/mnist_class.yaml")


def test_train_and_core_name_no_modality():
    """Outside docstrings and command-line help, multidiff/train and multidiff/core never name a
    modality: every modality plugs in through multidiff.train.modality (docs/modalities.md)."""
    word = re.compile(r"\b(audio|video|videos|shapes|images|mel|toy2d)\b", re.IGNORECASE)
    found = []
    for path in sorted((REPO / "multidiff/train").glob("*.py")) + sorted((REPO / "multidiff/core").glob("*.py")):
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body and \
                    isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))  # a docstring
            if isinstance(node, ast.keyword) and node.arg == "help":
                skip.update(id(n) for n in ast.walk(node.value))  # argparse help: documentation
        for node in ast.walk(tree):
            text = {ast.Constant: lambda n: n.value if isinstance(n.value, str) else None,
                    ast.Name: lambda n: n.id, ast.Attribute: lambda n: n.attr,
                    ast.arg: lambda n: n.arg}.get(type(node), lambda n: getattr(n, "name", None))(node)
            if isinstance(text, str) and id(node) not in skip and word.search(text.replace("_", " ")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:60]!r}")
    assert not found, "\n".join(found)


def test_unet2d_shapes_conditioning_and_checkpointing():
    torch.manual_seed(0)
    model = unet2d_tiny(num_classes=3, extra_in_channels=2)
    with torch.no_grad():
        for p in model.parameters():  # move away from the zero-initialised output
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 16, 16)
    cond = {"label": torch.tensor([0, 2]), "concat": torch.randn(2, 2, 16, 16)}
    out = model(x, torch.rand(2), cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, torch.rand(2), {**cond, "label": torch.tensor([1, 1])}))
    model.gradient_checkpointing = True
    sigma = torch.rand(2)
    a = model(x, sigma, cond)
    a.sum().backward()
    model.gradient_checkpointing = False
    torch.testing.assert_close(a, model(x, sigma, cond))
    assert UNet2D(channels=(8, 16), attention_levels=(), emb_dim=16)(x, torch.rand(2)).abs().max() == 0  # zero init
    with pytest.raises(ValueError, match="must divide by 2"):
        model(torch.randn(1, 1, 15, 16), torch.rand(1), cond)
    patched = unet2d_tiny(patch_size=2)  # space-to-depth: level 0 at 8x8 for 16x16 images
    with torch.no_grad():
        for p in patched.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y = patched(x, torch.rand(2))
    assert y.shape == x.shape and patched.total_factor == 4 and y.abs().max() > 0
    with pytest.raises(ValueError, match="must divide by 4"):
        patched(torch.randn(1, 1, 18, 16), torch.rand(1))
    with pytest.raises(ValueError, match="concat"):
        model(x, torch.rand(2), {"concat": torch.randn(2, 1, 16, 16)})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny image array (3 classes of 8x8 blocks at class-dependent places) with a trained judge."""
    from multidiff.images.data import ImageArrayDataset
    from multidiff.images.metrics import train_image_classifier
    from multidiff.images.registry import JUDGE

    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    images, labels, split = [], [], []
    for k in range(90):
        c = k % 3
        img = np.zeros((12, 12), np.uint8)
        img[2:6, 1 + 4 * c:4 + 4 * c] = 200 + rng.integers(0, 55)
        images.append(img)
        labels.append(c)
        split.append("train" if k < 60 else ("val" if k < 75 else "test"))
    np.savez(root / "d.npz", images=np.stack(images), labels=np.array(labels), split=np.array(split))
    data = ImageArrayDataset(root / "d.npz", "train", 16)
    train_image_classifier(data.all_images(), data.labels, 3, steps=60, batch_size=16).save(root / JUDGE)
    return root / "d.npz"


def overrides(npz, out):
    return [f"data.path={npz}", "data.params.size=16", "data.params.eval_split=test", f"trainer.out_dir={out}",
            "model.params={preset: tiny}", "trainer.batch_size=8", "trainer.duration_samples=48",
            "trainer.log_every_samples=8", "trainer.checkpoint_every_samples=48", "trainer.preview_every_samples=48",
            "trainer.preview_samples=6", "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
            "trainer.cpu_threads=1", "sampling.steps=4", "sampling.num_samples=6", "sampling.batch_size=6"]


def test_image_recipe_trains_previews_samples_evaluates_and_exports(digits, tmp_path, capsys):
    from multidiff.core import make_generators
    from multidiff.pipelines import ImageDiffusionPipeline, MultidiffPipeline

    out = tmp_path / "run"
    assert main(["train", RECIPE, *overrides(digits, out)]) == 0
    assert (out / "previews" / "samples-000000000048.png").is_file()
    assert main(["sample", str(out), "--num", "6", "--steps", "4", "--seed", "2", "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "s" / "samples.png").is_file()
    assert main(["eval", str(out), "--num", "6", "--steps", "4", "--guidance", "2", "--out", str(tmp_path / "e"),
                 "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())
    m = record["metrics"]
    assert record["reference"]["split"] == "test"
    assert main(["eval", str(out), "--num", "6", "--steps", "4", "--split", "val", "--out", str(tmp_path / "v"),
                 "--device", "cpu"]) == 0
    val = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert val["reference"]["split"] == "val" and val["metrics"]["classifier_real_accuracy"] >= 0
    assert 0 <= m["classifier_accuracy"] <= 1 and m["classifier_frechet"] > 0
    assert m["classifier_real_accuracy"] > 0.5 and m["classifier_frechet_real_floor"] >= 0
    # the export is an ImageDiffusionPipeline whose samples are multidiff sample's
    assert main(["export", str(out), str(tmp_path / "pipe")]) == 0
    pipe = MultidiffPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(pipe, ImageDiffusionPipeline)
    from safetensors.torch import load_file

    want = load_file(tmp_path / "s" / "samples.safetensors")
    got = pipe(class_labels=want["labels"].tolist(), generator=make_generators(2, 6), num_inference_steps=4,
               guidance_scale=1.0)
    torch.testing.assert_close(got.images, want["samples"], rtol=1e-4, atol=1e-5)
    assert len(got.save(tmp_path / "png", scale=2)) == 6
