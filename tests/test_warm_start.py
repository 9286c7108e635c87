"""model.init_from: fine-tuning starts exactly at the source model, also when inputs are added or dropped."""
import json

import pytest
import torch

from multidiff.audio.unet1d import UNet1D
from multidiff.nn.text import ByteTextEncoder, TextConditioned
from multidiff.train import checkpoint as ckpt
from multidiff.train.config import ConfigError
from multidiff.train.testing import tiny_config
from multidiff.train.trainer import Trainer


def unet(**kw) -> UNet1D:
    """A small UNet1D whose zero-initialised layers are perturbed, as after training."""
    torch.manual_seed(kw.pop("seed", 0))
    model = UNet1D(channels=(16, 32), factors=(2,), blocks_per_level=1, attention_levels=(1,), emb_dim=32,
                   attention_heads=2, **kw)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "cross_attn" not in name:  # a new cross-attention starts at zero, as built
                param.add_(0.05 * torch.randn_like(param))
    return model


def save(module, folder):
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    ckpt.write_module(folder / "model.safetensors", module)
    return folder


def test_widened_input_starts_as_the_source_model(tmp_path):
    source = unet(num_classes=3)
    target = unet(num_classes=3, extra_in_channels=2, seed=1)
    report = ckpt.warm_start(target, save(source, tmp_path / "src"))
    assert report.widened == ["in_conv.weight (16, 1, 7) -> (16, 3, 7)"] and not report.fresh
    x, sigma, label = torch.randn(2, 1, 64), torch.tensor([0.3, 2.0]), torch.tensor([0, 2])
    concat = torch.randn(2, 2, 64)  # any given signal: its weights start at zero
    expected = source(x, sigma, {"label": label})
    assert torch.equal(target(x, sigma, {"label": label, "concat": concat}), expected)
    # the added inputs still learn: their weights get a gradient
    target(x, sigma, {"label": label, "concat": concat}).square().mean().backward()
    assert target.in_conv.weight.grad[:, 1:].abs().sum() > 0


def test_narrowed_input_equals_the_source_with_those_inputs_at_zero(tmp_path):
    source = unet(extra_in_channels=2)
    target = unet(seed=1)
    report = ckpt.warm_start(target, save(source, tmp_path / "src"))
    assert report.narrowed == ["in_conv.weight (16, 3, 7) -> (16, 1, 7)"]
    x, sigma = torch.randn(2, 1, 64), torch.tensor([0.5, 5.0])
    assert torch.equal(target(x, sigma), source(x, sigma, {"concat": torch.zeros(2, 2, 64)}))


def test_text_model_from_a_plain_model_and_from_a_class_model(tmp_path):
    source = unet()
    target = TextConditioned(unet(cross_attention_dim=16, seed=1), ByteTextEncoder(16, 1, 2, 16))
    report = ckpt.warm_start(target, save(source, tmp_path / "plain"))
    assert not report.unused and report.fresh
    assert all(k.startswith("text_encoder.") or ".cross_" in k for k in report.fresh), report.fresh
    x, sigma = torch.randn(2, 1, 64), torch.tensor([0.5, 5.0])
    # cross-attention outputs start at zero, so any caption gives the source's output
    out = target(x, sigma, {"text": ["a", "something longer"]})
    torch.testing.assert_close(out, source(x, sigma), rtol=0, atol=1e-6)
    # a class-conditional source: its null-label embedding moves into the noise embedding's bias, so
    # the caption model starts as the source's unconditional model; the label table is listed unused
    source = unet(num_classes=3)
    report = ckpt.warm_start(target, save(source, tmp_path / "classes"))
    assert report.unused == ["label_embed.table.weight"]
    assert report.folded == ["label_embed null -> backbone.noise_embed.mlp.2.bias"]
    out = target(x, sigma, {"text": ["a", "b"]})
    torch.testing.assert_close(out, source(x, sigma, {"label": torch.tensor([3, -1])}), rtol=0, atol=1e-6)


def test_no_matching_tensor_is_an_error_naming_the_file(tmp_path):
    folder = save(torch.nn.Linear(3, 3), tmp_path / "other")
    with pytest.raises(ValueError, match="other/model.safetensors.*no tensor matches"):
        ckpt.warm_start(unet(), folder)


def test_trainer_starts_from_the_source_ema_and_records_it(tmp_path):
    Trainer(tiny_config(tmp_path / "a", steps=4)).fit()
    source = ckpt.read_module_state(ckpt.resolve(tmp_path / "a") / "ema.safetensors")
    trainer = Trainer(tiny_config(tmp_path / "b", f"model.init_from={tmp_path / 'a'}", steps=4))
    for name, tensor in trainer.unwrapped().state_dict().items():
        assert torch.equal(tensor.cpu(), source[name]), name
    for name, tensor in trainer.ema.module.state_dict().items():
        assert torch.equal(tensor.cpu(), source[name]), name
    trainer.fit()
    record = json.loads((tmp_path / "b" / "warm_start.json").read_text())
    assert record["source"].endswith("ema.safetensors") and len(record["copied"]) == len(source)


def test_init_from_a_missing_checkpoint_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.init_from"):
        tiny_config(tmp_path / "b", f"model.init_from={tmp_path / 'nothing'}")
