"""Caption conditioning: byte and pretrained text encoders, condition dropout, training and sampling with prompts."""
import math
import zlib
from pathlib import Path

import pytest
import torch

from multidiff.audio.builders import write_manifest
from multidiff.audio.io import save_audio
from multidiff.audio.unet1d import unet1d_tiny
from multidiff.cli import main
from multidiff.core import EDM, ClassifierFreeGuidance, Denoiser
from multidiff.nn.text import (
    BYTE_NULL,
    BYTE_OFFSET,
    ByteTextEncoder,
    PretrainedTextEncoder,
    TextConditioned,
    encode_bytes,
    encode_word_buckets,
)
from multidiff.train.config import ConfigError, load_config
from multidiff.train.trainer import drop_conditioning

REPO = Path(__file__).resolve().parents[1]


def perturb_zero_init(model, std=0.05):
    """Zero-initialised output layers (adaLN-Zero / zero convs) hide the conditioning at step 0."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(std=std)


def test_encode_bytes_ids_mask_null_and_truncation():
    ids, mask = encode_bytes(["ab", "", "héllo"], max_length=4)
    assert ids.shape == (3, 4) and mask.dtype == torch.bool
    assert ids[0].tolist() == [97 + BYTE_OFFSET, 98 + BYTE_OFFSET, 0, 0]
    assert ids[1].tolist() == [BYTE_NULL, 0, 0, 0]  # the empty caption is the one null token
    assert ids[2].tolist() == [b + BYTE_OFFSET for b in "héllo".encode()[:4]]  # UTF-8 bytes, truncated
    assert mask.sum(1).tolist() == [2, 1, 4]
    with pytest.raises(TypeError, match="list of strings"):
        encode_bytes("seven", 8)


def test_byte_encoder_is_independent_of_padding_and_batch():
    torch.manual_seed(0)
    enc = ByteTextEncoder(dim=32, depth=2, heads=4, max_length=32).eval()
    alone, m_alone = enc(["seven"])
    batch, m_batch = enc(["seven", "a much longer caption"])
    assert alone.shape == (1, 5, 32) and batch.shape == (2, 21, 32)
    assert m_batch[0].sum() == 5 and not m_batch[0, 5:].any()
    torch.testing.assert_close(batch[0, :5], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(["seven"])[0], enc(["eight"])[0][:, :5])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("word_buckets", [0, 64])
def test_byte_encoder_sees_word_order_from_the_start(seed, word_buckets):
    # Captions with the same bytes in another order must differ after mean pooling at init. With
    # unit-variance bytes beside 0.02 positions they differed by 0.6% (a bag of bytes: the digit
    # captions' model never learned which word named the digit); now by about 10%.
    torch.manual_seed(seed)
    enc = ByteTextEncoder(dim=128, depth=2, heads=4, max_length=64, word_buckets=word_buckets).eval()
    a, b = enc(["seven five"])[0][0].mean(0), enc(["five seven"])[0][0].mean(0)
    assert ((a - b).norm() / a.norm()).item() > 0.05
    assert enc.tokens.weight[0].abs().max() == 0  # the padding row stays zero
    for table in (enc.tokens.weight[1:], enc.positions) + ((enc.words.weight[1:],) if word_buckets else ()):
        torch.testing.assert_close(table.std(), torch.tensor(1.0), atol=0.05, rtol=0)


def test_word_buckets_align_with_bytes_and_ignore_case():
    ids = encode_word_buckets(["Seven, en-gb", "", "seven"], max_length=64, buckets=1000)
    byte_ids, mask = encode_bytes(["Seven, en-gb", "", "seven"], max_length=64)
    assert ids.shape == byte_ids.shape == (3, 12)
    seven = 1 + zlib.crc32(b"seven") % 1000
    assert ids[0, :5].tolist() == [seven] * 5 and ids[2, :5].tolist() == [seven] * 5
    assert ids[0, 5:7].tolist() == [0, 0]  # ", " separates words
    assert ids[0, 7:].tolist() == [1 + zlib.crc32(b"en-gb") % 1000] * 5  # "-" stays inside a word
    assert ids[1].abs().sum() == 0 and ids[2, 5:].abs().sum() == 0  # null caption and padding
    torch.manual_seed(0)
    enc = ByteTextEncoder(dim=16, depth=0, heads=2, max_length=64, word_buckets=1000).eval()
    expected = enc.norm(enc.tokens(byte_ids[:1]) + enc.positions[:12] + enc.words.weight[ids[:1]])
    torch.testing.assert_close(enc(["Seven, en-gb"])[0], expected)


def test_text_conditioned_backbone_shapes_and_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    enc = ByteTextEncoder(dim=32, depth=1, heads=4, max_length=16)
    model = TextConditioned(unet1d_tiny(cross_attention_dim=32), enc)
    perturb_zero_init(model)
    x = torch.randn(2, 1, 256)
    out = model(x, torch.rand(2), {"text": ["low tone", "high tone"]})
    assert out.shape == (2, 1, 256)
    out.square().mean().backward()
    assert enc.tokens.weight.grad is not None and enc.tokens.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        model(torch.randn(3, 1, 256), torch.rand(3), {"text": ["a", "b"]})


def test_drop_conditioning_replaces_label_and_caption_of_dropped_samples_only():
    cond = {"label": torch.tensor([3, 4, 5]), "text": ["three", "four", "five"], "concat": torch.ones(3, 2)}
    out = drop_conditioning(cond, torch.tensor([False, True, False]), null_label=10)
    assert out["label"].tolist() == [3, 10, 5] and out["text"] == ["three", "", "five"]
    assert out["concat"] is cond["concat"] and cond["text"] == ["three", "four", "five"]  # input untouched
    assert drop_conditioning(cond, torch.tensor([True] * 3), None)["label"].tolist() == [3, 4, 5]


def test_cfg_on_captions_equals_manual_lerp_and_scale_one_is_conditional():
    torch.manual_seed(0)
    model = TextConditioned(unet1d_tiny(cross_attention_dim=32), ByteTextEncoder(dim=32, depth=1, max_length=16))
    perturb_zero_init(model)
    model.eval()
    den = Denoiser(model, EDM(), "edm", sigma_data=0.5)
    x, sigma = torch.randn(2, 1, 256), torch.tensor([1.0, 1.0])
    cond = {"text": ["high tone", "low tone"]}
    uncond = lambda c: {"text": [""] * len(c["text"])}  # noqa: E731
    with torch.no_grad():
        d_c, d_u = den(x, sigma, cond), den(x, sigma, uncond(cond))
        assert not torch.allclose(d_c, d_u)
        torch.testing.assert_close(ClassifierFreeGuidance(den, 3.0, uncond)(x, sigma, cond), d_u + 3 * (d_c - d_u),
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(ClassifierFreeGuidance(den, 1.0, uncond)(x, sigma, cond), d_c)


# ----------------------------------------------------------------- a frozen transformers encoder
@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path_factory.mktemp("t5")
    words = ["<pad>", "</s>", "<unk>", "seven", "eight", "deep", "slow", "voice", "tone"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                         eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(config).save_pretrained(path)
    return path


def test_pretrained_encoder_matches_the_model_caches_and_stays_out_of_state_dict(tiny_t5):
    import transformers

    enc = PretrainedTextEncoder(tiny_t5, max_length=8)
    assert enc.dim == 16 and len(enc.state_dict()) == 0 and not list(enc.parameters())
    context, mask = enc(["seven deep voice", "eight"])
    assert context.shape == (2, 3, 16) and mask.sum(1).tolist() == [3, 1]
    ref = transformers.T5EncoderModel.from_pretrained(tiny_t5).eval()
    ids = transformers.AutoTokenizer.from_pretrained(tiny_t5)(["seven deep voice"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(context[0], ref(input_ids=ids).last_hidden_state[0])
    calls = []
    enc.model.register_forward_hook(lambda *a: calls.append(1))
    again, _ = enc(["eight", "seven deep voice"])  # both cached: no forward pass
    assert calls == [] and torch.equal(again[1], context[0]) and torch.equal(again[0, :1], context[1, :1])
    enc(["slow tone"])
    assert calls == [1]


def test_pretrained_encoder_needs_a_local_folder(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        PretrainedTextEncoder(tmp_path)


# ------------------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def captioned_tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    rows = []
    for k in range(16):
        high = k % 2
        t = torch.arange(800) / 8000
        save_audio(root / f"{k}.wav", (0.5 * torch.sin(2 * math.pi * (880.0 if high else 220.0) * t))[None], 8000)
        rows.append({"path": f"{k}.wav", "label": high, "text": "high tone" if high else "low tone", "split": "train"})
    return write_manifest(root / "manifest.csv", list(rows[0]), rows)


def text_overrides(manifest, out):
    return [f"data.path={manifest}", "data.params.sample_rate=8000", "data.params.length=1024",
            "model.params.preset=tiny", "model.params.cross_attention_dim=32", "model.text_encoder.kind=bytes",
            "model.text_encoder.dim=32", "model.text_encoder.depth=1", "objective.cond_drop_prob=0.2",
            f"trainer.out_dir={out}", "trainer.batch_size=8", "trainer.duration_samples=32",
            "trainer.log_every_samples=8", "trainer.checkpoint_every_samples=32", "trainer.preview_every_samples=0",
            "trainer.tracker=none", "trainer.progress=false", "trainer.resume=null",
            "sampling.steps=3", "sampling.num_samples=2", "sampling.batch_size=2"]


def test_captioned_training_then_sampling_with_prompts(captioned_tones, tmp_path, capsys):
    from safetensors.torch import load_file

    recipe = str(REPO / "recipes/audio/tones_smoke.yaml")
    out = tmp_path / "run"
    assert main(["train", recipe, *text_overrides(captioned_tones, out)]) == 0
    ckpt = out / "checkpoints" / "latest"
    assert any(k.startswith("text_encoder.") for k in load_file(str(ckpt / "model.safetensors")))
    runs = {}
    for name, extra in {"high": ["--prompt", "high tone"], "high_again": ["--prompt", "high tone"],
                        "low": ["--prompt", "low tone"], "guided": ["--prompt", "high tone", "--guidance", "3"],
                        # guidance only below sigma 1e-9, i.e. at no step: the unguided samples exactly
                        "no_interval": ["--prompt", "high tone", "--guidance", "3", "--guidance-interval", "0", "1e-9"],
                        }.items():
        # on cpu like the pipeline and the sweep below: cuda kernels agree only to rounding
        assert main(["sample", str(ckpt), "--num", "2", "--seed", "0", "--device", "cpu", "--out", str(tmp_path / name),
                     *extra]) == 0
        runs[name] = load_file(str(tmp_path / name / "samples.safetensors"))["samples"]
    assert runs["high"].shape == (2, 1, 1024) and torch.isfinite(runs["high"]).all()
    assert torch.equal(runs["high"], runs["high_again"]) and torch.equal(runs["high"], runs["no_interval"])
    assert not torch.equal(runs["high"], runs["low"]) and not torch.equal(runs["high"], runs["guided"])
    # the exported pipeline carries the byte encoder and draws the same samples
    from multidiff.core import make_generators
    from multidiff.pipelines import MultidiffPipeline

    assert main(["export", str(ckpt), str(tmp_path / "pipe")]) == 0
    pipe = MultidiffPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    for name, guidance in (("high", 1.0), ("guided", 3.0)):
        got = pipe(class_labels=[0, 1], prompt="high tone", generator=make_generators(0, 2), guidance_scale=guidance)
        assert torch.equal(got.audios, runs[name])
    # the recipes' guidance sweep (text_accuracy.py) draws exactly what multidiff sample draws
    import json

    from multidiff.train.sweep import guidance_sweep, load_text_model, write_sweep

    model, config, spec, _ = load_text_model(ckpt)
    kept = {}
    rows = guidance_sweep(model, config, spec, ["high tone"] * 2, [1.0, 3.0], steps=3, seed=0,
                          score=lambda x: {"rms": float(x.square().mean().sqrt())},
                          keep=lambda scale, x: kept.__setitem__(scale, x))
    assert torch.equal(kept[1.0], runs["high"]) and torch.equal(kept[3.0], runs["guided"])
    assert rows[0]["rms"] == pytest.approx(float(runs["high"].square().mean().sqrt()))
    # prepare (a mel model's decoding) runs once per scale, and score and keep both see its output
    calls, seen = [], {}
    prepared = guidance_sweep(model, config, spec, ["high tone"] * 2, [1.0, 3.0], steps=3, seed=0,
                              prepare=lambda x: calls.append(x) or 2 * x,
                              score=lambda x: {"rms": float(x.square().mean().sqrt())},
                              keep=lambda scale, x: seen.__setitem__(scale, x))
    assert len(calls) == 2 and torch.equal(seen[3.0], 2 * runs["guided"])
    assert prepared[0]["rms"] == pytest.approx(2 * rows[0]["rms"])
    write_sweep(tmp_path / "sweep", {"checkpoint": "x"}, rows, [("rms", "rms", ".4f")])
    assert [r["guidance"] for r in json.loads((tmp_path / "sweep" / "metrics.json").read_text())["rows"]] == [1.0, 3.0]
    assert f"| 3 | {rows[1]['rms']:.4f} |" in capsys.readouterr().out


def test_text_encoder_config_errors_name_the_key(captioned_tones, tmp_path):
    recipe = str(REPO / "recipes/audio/tones_smoke.yaml")
    base = [o for o in text_overrides(captioned_tones, tmp_path) if "cross_attention_dim" not in o]
    with pytest.raises(ConfigError, match="model.params.cross_attention_dim"):
        load_config(recipe, base)
    with pytest.raises(ConfigError, match="model.text_encoder.kind"):
        load_config(recipe, text_overrides(captioned_tones, tmp_path) + ["model.text_encoder.kind=t5"])
    with pytest.raises(ConfigError, match="model.text_encoder.path"):
        load_config(recipe, text_overrides(captioned_tones, tmp_path) + ["model.text_encoder.kind=pretrained",
                                                                         f"model.text_encoder.path={tmp_path}"])
    assert main(["sample", "/nonexistent/ckpt", "--prompt", "x"]) == 2


def test_text_conditioned_encodes_once_per_generation_and_never_caches_while_training():
    """Sampling asks for the same captions at every step: encoded once in eval mode without
    gradients; in train mode (a consistency target is computed without gradients too) every call
    encodes, since the encoder's weights move between steps."""
    from multidiff.nn.text import TextConditioned

    calls = []

    class Encoder(torch.nn.Module):
        def forward(self, captions):
            calls.append(list(captions))
            return torch.ones(len(captions), 2, 4), torch.ones(len(captions), 2, dtype=torch.bool)

    class Backbone(torch.nn.Module):
        def forward(self, x, noise_level, cond):
            return x + cond["context"].sum()

    model, x = TextConditioned(Backbone(), Encoder()), torch.zeros(2, 3)
    with torch.no_grad():
        model.eval()
        for _ in range(3):
            model(x, torch.ones(2), {"text": ["a", "b"]})
        assert calls == [["a", "b"]]
        model(x, torch.ones(2), {"text": ["a", "c"]})  # other captions: encoded again
        assert len(calls) == 2
        model.train()
        for _ in range(2):
            model(x, torch.ones(2), {"text": ["a", "c"]})
        assert len(calls) == 4
