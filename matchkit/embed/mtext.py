"""Multilingual text encoders paired with a CLIP image tower.

OpenAI CLIP's text tower reads English. Multilingual Knowledge Distillation
(Reimers & Gurevych, 2020) trains a multilingual transformer, plus mean
pooling and a linear projection, to put a sentence in any of ~50 languages
where CLIP's text tower puts its English translation. Queries in those
languages can then be matched against images embedded by the *unchanged*
CLIP image tower. The published example is
``sentence-transformers/clip-ViT-B-32-multilingual-v1`` for
``openai/clip-vit-base-patch32``.

This module reads that checkpoint layout (sentence-transformers' folder
format) with plain transformers: ``modules.json`` lists a Transformer module
(tokenizer + ``AutoModel`` weights), a Pooling module (mean, CLS or max over
tokens) and Dense modules (a linear layer whose weights are stored beside the
model, ``N_Dense/model.safetensors`` or ``pytorch_model.bin``, with an
activation). sentence-transformers itself is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matchkit.embed.base import HUB_HOWTO, EmbedderError, ModelNotFound, batches, l2_normalise

_ACTIVATIONS = {"torch.nn.modules.linear.Identity": None, "torch.nn.Identity": None,
                "torch.nn.modules.activation.Tanh": "tanh", "torch.nn.Tanh": "tanh"}


def _resolve_dir(source: str) -> Path:
    """Local folder, or a hub repo from the cache (downloaded only when online)."""
    from matchkit.embed.hub import _hub_reachable, hub_offline

    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.exists() or "/" not in source or source.count("/") > 1 or source.startswith((".", "/")):
        raise ModelNotFound(f"text model {source!r}: no such directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - comes with transformers
        raise ModelNotFound("huggingface_hub is needed to use hub ids; pass a directory") from exc
    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        if hub_offline() or not _hub_reachable():
            raise ModelNotFound(f"text model {source!r} is not in the Hugging Face cache and "
                                "cannot be downloaded now. " + HUB_HOWTO.format(repo=source)) from None
    try:
        return Path(snapshot_download(source))
    except Exception as exc:
        raise ModelNotFound(f"text model {source!r} could not be downloaded ({exc}). "
                            + HUB_HOWTO.format(repo=source)) from exc


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ModelNotFound(f"{path} is missing: not a sentence-transformers model folder") from exc
    except ValueError as exc:
        raise EmbedderError(f"{path} is not valid JSON: {exc}") from exc


class MultilingualTextEncoder:
    """Text -> unit vectors in a CLIP image tower's space (see module docstring)."""

    def __init__(self, source: str, *, device, dtype, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device, self.dtype, self.batch_size = device, dtype, max(1, int(batch_size))
        root = _resolve_dir(str(source))
        modules = _read_json(root / "modules.json")
        if not isinstance(modules, list) or not modules:
            raise EmbedderError(f"{root}/modules.json does not list modules")
        self.pooling = "mean"
        self.dense: list[tuple[object, object, str | None]] = []
        transformer_dir = None
        self.max_length = 128
        for mod in sorted(modules, key=lambda m: int(m.get("idx", 0))):
            kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
            folder = root / mod.get("path", "")
            if kind == "Transformer":
                transformer_dir = folder
                cfg_path = folder / "sentence_bert_config.json"
                if cfg_path.is_file():
                    self.max_length = int(_read_json(cfg_path).get("max_seq_length", 128))
            elif kind == "Pooling":
                cfg = _read_json(folder / "config.json")
                modes = [m for m in ("cls_token", "mean_tokens", "max_tokens")
                         if cfg.get(f"pooling_mode_{m}")]
                if len(modes) != 1:
                    raise EmbedderError(f"pooling {modes or 'none'} is not supported "
                                        "(one of CLS, mean, max)")
                self.pooling = modes[0].split("_")[0]
            elif kind == "Dense":
                self.dense.append(self._load_dense(folder, torch))
            elif kind == "Normalize":
                pass  # outputs are normalised anyway
            else:
                raise EmbedderError(f"module type {mod.get('type')!r} in {root} is not supported")
        if transformer_dir is None:
            raise EmbedderError(f"{root}/modules.json has no Transformer module")
        from matchkit.embed.hub import _quiet_transformers

        with _quiet_transformers():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir))
                model = AutoModel.from_pretrained(str(transformer_dir))
            except (OSError, ValueError) as exc:
                raise ModelNotFound(f"text model in {transformer_dir} could not be loaded: "
                                    f"{str(exc).splitlines()[0]}") from exc
        self.model = model.to(device, dtype=dtype).eval()
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 100_000:
            self.max_length = min(self.max_length, limit)
        self.dim = int(self.dense[-1][0].shape[0]) if self.dense else int(model.config.hidden_size)

    def _load_dense(self, folder: Path, torch):
        cfg = _read_json(folder / "config.json")
        act_name = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if act_name not in _ACTIVATIONS:
            raise EmbedderError(f"Dense activation {act_name!r} is not supported")
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ModelNotFound(f"{folder} has no model.safetensors or pytorch_model.bin")
        weight = state.get("linear.weight")
        if weight is None:
            raise EmbedderError(f"{folder}: no linear.weight in the Dense weights")
        if tuple(weight.shape) != (cfg.get("out_features"), cfg.get("in_features")):
            raise EmbedderError(f"{folder}: weight shape {tuple(weight.shape)} does not match "
                                "in_features/out_features")
        bias = state.get("linear.bias") if cfg.get("bias", True) else None
        weight = weight.to(self.device, dtype=self.dtype)
        bias = bias.to(self.device, dtype=self.dtype) if bias is not None else None
        return weight, bias, _ACTIVATIONS[act_name]

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        row = 0
        with torch.inference_mode():
            for chunk in batches(texts, self.batch_size):
                enc = self.tokenizer(list(chunk), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()
                       if k in ("input_ids", "attention_mask", "token_type_ids")}
                tokens = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                if self.pooling == "mean":
                    x = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1)
                elif self.pooling == "cls":
                    x = tokens[:, 0]
                else:
                    x = tokens.masked_fill(mask == 0, float("-inf")).max(1).values
                for weight, bias, act in self.dense:
                    x = torch.nn.functional.linear(x, weight, bias)
                    if act == "tanh":
                        x = torch.tanh(x)
                out[row:row + len(chunk)] = x.float().cpu().numpy()
                row += len(chunk)
        return l2_normalise(out)
