"""Text encoders for caption conditioning: captions (list of str) -> (context (batch, tokens, dim), mask (batch, tokens)).

Two kinds, one interface (``encoder(captions) -> (context, mask)``, ``encoder.dim``):

* :class:`ByteTextEncoder`: UTF-8 bytes as tokens (no vocabulary file, as ByT5, Xue et al. 2022)
  through a small pre-norm transformer, trained from scratch with the diffusion model, so
  text-conditioned recipes run offline on any machine.
* :class:`PretrainedTextEncoder`: a Hugging Face ``transformers`` encoder (T5 encoder, CLIP
  text model, or any model whose forward returns ``last_hidden_state``) loaded from a local
  folder only, frozen, with its embeddings cached per caption (Imagen, Saharia et al. 2022,
  shows a frozen T5 suffices). Its weights are not part of the diffusion model's state dict:
  checkpoints record the folder, not a copy of the encoder.

The empty caption "" is the null condition of classifier-free guidance: the byte encoder gives
it one learned null token; a pretrained encoder gives whatever it gives for "" (as Stable
Diffusion does).
"""
from __future__ import annotations

import copy
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from torch import nn

from .modeling import SafetensorsModelMixin

BYTE_PAD, BYTE_NULL, BYTE_OFFSET = 0, 1, 2  # token 0 pads, 1 is the null caption, byte b is token b + 2


def encode_bytes(captions: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (ids (batch, tokens) long, mask (batch, tokens) bool); UTF-8 bytes truncated to
    ``max_length``; the empty caption becomes the single null token."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got a single str")
    rows = []
    for text in captions:
        if not isinstance(text, str):
            raise TypeError(f"caption must be a str, got {type(text).__name__}: {text!r}")
        data = text.encode("utf-8")[:max_length]
        rows.append([b + BYTE_OFFSET for b in data] if data else [BYTE_NULL])
    ids = _pad_rows(rows, BYTE_PAD)
    return ids, ids != BYTE_PAD


def _pad_rows(rows: list[list[int]], fill: int) -> torch.Tensor:
    """Ragged rows of token ids -> (len(rows), longest row) long, right-padded with ``fill``."""
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids


def _is_word_byte(b: int) -> bool:
    return b >= 128 or chr(b).isalnum() or b in (ord("-"), ord("'"))


def encode_word_buckets(captions: Sequence[str], max_length: int, buckets: int) -> torch.Tensor:
    """Captions -> (batch, tokens) long, aligned with :func:`encode_bytes`: each byte's word (a run
    of letters, digits, "-" and "'", lower-cased) hashed by CRC-32 into 1..buckets; 0 for
    separators, padding and the null caption. The hash is stable across runs and machines."""
    rows = []
    for text in captions:
        data = text.encode("utf-8")[:max_length]
        row, start = [0] * len(data), None
        for i in range(len(data) + 1):
            inside = i < len(data) and _is_word_byte(data[i])
            if inside and start is None:
                start = i
            elif not inside and start is not None:
                bucket = 1 + zlib.crc32(data[start:i].lower()) % buckets
                row[start:i] = [bucket] * (i - start)
                start = None
        rows.append(row or [0])
    return _pad_rows(rows, 0)


class ByteTextEncoder(SafetensorsModelMixin, ConfigMixin):
    """Byte-level caption encoder trained with the diffusion model.

    captions (batch,) -> (context (batch, tokens, dim), mask (batch, tokens) bool, True = real token).
    Byte embeddings plus learned positions, ``depth`` pre-norm transformer layers (SDPA inside
    torch's TransformerEncoderLayer), a final LayerNorm. A diffusers ModelMixin, so pipelines
    save it with save_pretrained as their ``text_encoder`` component.

    ``word_buckets`` > 0 adds to every byte the embedding of its whole word, hashed into that many
    buckets (fastText's subword-and-word sum, Bojanowski et al. 2017, with the hashing trick):
    still no vocabulary file, but "six" and "seven" start as unrelated vectors instead of letters
    shared with the caption's other words, so a caption's mean differs by its words from the first
    step (see ``tests/test_text.py``).
    """

    @register_to_config
    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 64, dropout: float = 0.0,
                 word_buckets: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"text encoder dim {dim} is not divisible by heads {heads}")
        self.dim, self.max_length = dim, max_length
        # bytes, positions (and words) all start at unit variance: with 0.02 positions beside
        # unit bytes the encoder saw a bag of bytes (no word order: "six" and "en-gb-x-rp" share
        # their rare letter), and with everything at 0.02 the layers' biases drowned the input
        # and the trained encoder gave every caption the same output
        self.tokens = nn.Embedding(256 + BYTE_OFFSET, dim, padding_idx=BYTE_PAD)
        self.positions = nn.Parameter(torch.randn(max_length, dim))
        self.word_buckets = word_buckets
        self.words = nn.Embedding(word_buckets + 1, dim, padding_idx=0) if word_buckets > 0 else None
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False) if depth > 0 else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = encode_bytes(captions, self.max_length)
        ids, mask = ids.to(self.positions.device), mask.to(self.positions.device)
        h = self.tokens(ids) + self.positions[:ids.shape[1]]
        if self.words is not None:
            h = h + self.words(encode_word_buckets(captions, self.max_length, self.word_buckets).to(ids.device))
        if self.layers is not None:
            h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


class PretrainedTextEncoder(nn.Module):
    """A frozen ``transformers`` text encoder from a local folder, with a per-caption cache.

    captions (batch,) -> (context (batch, tokens, hidden) float32, mask (batch, tokens) bool).
    ``path`` must hold the model's config, weights and tokenizer files (``save_pretrained``
    output); nothing is downloaded. T5 configs load ``T5EncoderModel``, CLIP configs
    ``CLIPTextModel``, others ``AutoModel``.
    """

    def __init__(self, path: str | Path, max_length: int = 77, cache_size: int = 100_000):
        super().__init__()
        try:
            import transformers
        except ImportError as err:  # optional dependency
            raise ImportError("PretrainedTextEncoder needs transformers: pip install 'multidiff[text]'") from err
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {path} has no config.json (expected a local save_pretrained folder)")
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        kind = getattr(config, "model_type", "")
        if kind in ("t5", "mt5", "umt5"):
            cls = transformers.T5EncoderModel if kind == "t5" else transformers.AutoModel
        elif kind in ("clip", "clip_text_model"):
            cls = transformers.CLIPTextModel
        else:
            cls = transformers.AutoModel
        model = cls.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        # kept out of the module tree so the frozen weights stay out of state_dict, the optimizer and the EMA
        self._model = [model]
        self.path, self.max_length, self.cache_size = str(path), max_length, cache_size
        self.dim = int(getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
                       or config.text_config.hidden_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __deepcopy__(self, memo):  # an EMA copy shares the frozen encoder instead of duplicating it
        clone = copy.copy(self)
        clone.__dict__ = {**self.__dict__, "_cache": OrderedDict(), "_modules": OrderedDict(),
                          "_parameters": OrderedDict(), "_buffers": OrderedDict()}
        return clone

    @property
    def model(self):
        return self._model[0]

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .float() reach the frozen model too
        self._model[0] = self._model[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(input_ids=tokens["input_ids"].to(device),
                         attention_mask=tokens["attention_mask"].to(device)).last_hidden_state.float()
        lengths = tokens["attention_mask"].sum(1).tolist()
        return [out[i, :max(1, n)].cpu() for i, n in enumerate(lengths)]

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        captions = list(captions)
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            for text, emb in zip(missing, self._encode(missing)):
                self._cache[text] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        embs = [self._cache[c] for c in captions]
        width = max(e.shape[0] for e in embs)
        device = next(self.model.parameters()).device
        context = torch.zeros(len(embs), width, self.dim, device=device)
        mask = torch.zeros(len(embs), width, dtype=torch.bool, device=device)
        for i, e in enumerate(embs):
            context[i, :e.shape[0]], mask[i, :e.shape[0]] = e.to(device), True
        return context, mask


class TextConditioned(nn.Module):
    """A backbone plus a text encoder: ``cond['text']`` (list of captions) becomes the backbone's
    cross-attention ``cond['context']`` / ``cond['context_mask']``; every other key passes through.

    forward(x, noise_level, cond) has the backbone's shape contract. The backbone must have been
    built with ``cross_attention_dim == text_encoder.dim``.
    """

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.backbone, self.text_encoder = backbone, text_encoder
        self._encoded = None  # (captions, device, context, mask) of the last call in eval mode without gradients

    def train(self, mode: bool = True):
        self._encoded = None  # the encoder's weights may change while training
        return super().train(mode)

    @property
    def config(self):
        return self.backbone.config

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(captions)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond=None) -> torch.Tensor:
        cond = dict(cond or {})
        captions = cond.pop("text", None)
        if captions is not None:
            if len(captions) != x.shape[0]:
                raise ValueError(f"cond['text'] has {len(captions)} captions for a batch of {x.shape[0]}")
            key = (tuple(captions), x.device)
            sampling = not self.training and not torch.is_grad_enabled()  # training may change the encoder's weights
            if sampling and self._encoded is not None and self._encoded[0] == key:
                context, mask = self._encoded[1:]  # sampling: every step asks for the same captions
            else:
                context, mask = self.text_encoder(list(captions))
                self._encoded = (key, context, mask) if sampling else None
            cond["context"], cond["context_mask"] = context.to(x.dtype), mask
        return self.backbone(x, noise_level, cond)

