"""CLIP image and text embeddings through Hugging Face transformers.

A checkpoint is a local directory (``save_pretrained`` layout: config.json,
weights, tokenizer and image-processor files) or a hub id that is already in
the Hugging Face cache. matchkit never downloads on its own initiative when
the hub is unreachable or ``HF_HUB_OFFLINE`` is set: a missing model is a
:class:`ModelNotFound` that says how to fetch it, not a traceback.

torch and transformers are imported when a model is loaded, never by
``import matchkit``; they come with the ``matchkit[clip]`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from matchkit.embed.hub import _hub_reachable, _quiet_transformers, hub_offline  # noqa: F401
from matchkit.embed.base import HUB_HOWTO, Embedder, EmbedderError, ModelNotFound, as_rgb, batches, l2_normalise

#: CLIP's own zero-shot prompt; a bare word embeds worse than a caption.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {}.",)

CLIP_INSTALL = "pip install 'matchkit[clip]'"


def _import_backend():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelNotFound(f"CLIP models need torch and transformers ({exc.name} is not "
                            f"installed); install them with {CLIP_INSTALL}") from exc
    return torch, transformers


def is_clip_dir(path: str | os.PathLike) -> bool:
    """A directory holding a transformers CLIP config (model_type "clip")."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    import json

    try:
        return json.loads(cfg.read_text()).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def _from_pretrained(loader, source: str, what: str, **kw):
    """``loader.from_pretrained(source)``: local directory, else hub cache, else the hub
    (unless offline); every failure to find files becomes ModelNotFound."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFound(f"{source} is not a model directory")
        try:
            return loader.from_pretrained(str(local), local_files_only=True, **kw)
        except (OSError, ValueError) as exc:
            raise ModelNotFound(f"{what} could not be loaded from {local}: {_first_line(exc)}. "
                                "The directory must be a transformers `save_pretrained` checkpoint "
                                "(config.json, weights, tokenizer and preprocessor files).") from exc
    if "/" not in source or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelNotFound(f"{source}: no such model directory. Pass a directory holding a "
                            "transformers CLIP checkpoint (saved with save_pretrained), or a hub id "
                            "such as openai/clip-vit-base-patch32 that is in the Hugging Face cache")
    try:
        return loader.from_pretrained(source, local_files_only=True, **kw)
    except (OSError, ValueError) as cached_exc:
        if hub_offline():
            raise ModelNotFound(
                f"{what} {source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. "
                + HUB_HOWTO.format(repo=source)) from cached_exc
    if not _hub_reachable():
        raise ModelNotFound(f"{what} {source!r} is not in the Hugging Face cache and the hub "
                            "cannot be reached from this machine. " + HUB_HOWTO.format(repo=source))
    try:
        return loader.from_pretrained(source, **kw)
    except Exception as exc:  # network errors come in many classes
        raise ModelNotFound(f"{what} {source!r} is not cached and could not be downloaded "
                            f"({_first_line(exc)}). " + HUB_HOWTO.format(repo=source)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _fail_fast_if_uncached(source: str) -> None:
    """Offline and a hub id that is not cached: say so before the slow torch import."""
    if Path(source).expanduser().exists() or not hub_offline():
        return
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    try:
        cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # invalid repo id etc.: let from_pretrained report it
        return
    if not cached:
        raise ModelNotFound(f"CLIP model {source!r} is not in the Hugging Face cache and "
                            "HF_HUB_OFFLINE is set. " + HUB_HOWTO.format(repo=source))


def _pick_device(torch, device: str):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EmbedderError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedderError(f"device {device!r} requested but CUDA is not available "
                            "(this torch build or machine has no GPU); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise EmbedderError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _features(out) -> "object":
    """transformers 4.x returns the projected tensor; 5.x returns a model output whose
    ``pooler_output`` holds the projected embedding."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class CLIPEmbedder(Embedder):
    """A CLIP model: images and texts into one space of ``projection_dim`` dimensions.

    Parameters
    ----------
    source:
        Local checkpoint directory or hub id (used only if cached, or online).
    name:
        What galleries record; defaults to ``source``.
    device:
        "cpu", "cuda", "cuda:N" or "auto".
    batch_size:
        Images or texts per forward pass.
    templates:
        Prompt templates with one ``{}``; a text query is embedded through each
        and the unit vectors are averaged (CLIP's prompt ensembling).
    fp16:
        Half precision; default (None) means on GPU only. Refused on CPU, where
        it is slow and inaccurate.
    text_model:
        Optional directory or hub id of a multilingual text encoder trained to
        match this image tower (sentence-transformers layout); see
        :mod:`matchkit.embed.mtext`.
    threads:
        If given, torch's intra-op thread count (a process-wide setting).
    """

    has_text = True

    def __init__(self, source: str, *, name: str | None = None, device: str = "cpu",
                 batch_size: int = 32, templates: Sequence[str] | None = None,
                 fp16: bool | None = None, text_model: str | None = None,
                 threads: int | None = None):
        self.source = str(source)
        _fail_fast_if_uncached(self.source)
        torch, transformers = _import_backend()
        self._torch = torch
        self.name = name or self.source
        self.batch_size = max(1, int(batch_size))
        self.templates = tuple(templates) if templates is not None else DEFAULT_TEMPLATES
        for t in self.templates:
            if t.count("{}") != 1:
                raise EmbedderError(f"prompt template {t!r} must contain exactly one '{{}}'")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = _pick_device(torch, device)
        if fp16 is None:
            fp16 = self.device.type == "cuda"
        if fp16 and self.device.type != "cuda":
            raise EmbedderError("fp16 is only supported on a CUDA device")
        self.dtype = torch.float16 if fp16 else torch.float32

        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        with _quiet_transformers():
            model = _from_pretrained(CLIPModel, self.source, "CLIP model")
            proc_kw = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {}
            self.image_processor = _from_pretrained(AutoImageProcessor, self.source,
                                                    "CLIP image processor", **proc_kw)
            self.tokenizer = None if text_model else _from_pretrained(
                AutoTokenizer, self.source, "CLIP tokenizer")
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.text_encoder = None
        if text_model:
            from matchkit.embed.mtext import MultilingualTextEncoder

            self.text_encoder = MultilingualTextEncoder(text_model, device=self.device,
                                                        dtype=self.dtype, batch_size=self.batch_size)
            if self.text_encoder.dim != self.dim:
                raise EmbedderError(f"text model {text_model!r} gives {self.text_encoder.dim}-d "
                                    f"vectors but the CLIP image tower gives {self.dim}-d; "
                                    "they were not trained together")

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        torch = self._torch
        images = [as_rgb(im) for im in images]
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        row = 0
        with torch.inference_mode():
            for chunk in batches(images, self.batch_size):
                pixels = self.image_processor(images=list(chunk), return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.device, dtype=self.dtype)
                feats = _features(self.model.get_image_features(pixel_values=pixels))
                out[row:row + len(chunk)] = feats.float().cpu().numpy()
                row += len(chunk)
        return l2_normalise(out)

    def embed_texts(self, texts: Sequence[str], *,
                    templates: Sequence[str] | None = None) -> np.ndarray:
        """Unit vectors for text queries, each the normalised mean over the prompt
        templates (``templates=()`` embeds the texts verbatim)."""
        if isinstance(texts, str):
            raise EmbedderError("embed_texts takes a list of strings, not one string")
        templates = self.templates if templates is None else tuple(templates)
        if not templates:
            templates = ("{}",)
        prompts = [t.format(text) for text in texts for t in templates]
        vecs = self._encode_prompts(prompts) if prompts else np.zeros((0, self.dim), np.float32)
        vecs = vecs.reshape(len(texts), len(templates), self.dim).mean(axis=1)
        return l2_normalise(vecs)

    def _encode_prompts(self, prompts: list[str]) -> np.ndarray:
        if self.text_encoder is not None:
            return self.text_encoder.encode(prompts)
        torch = self._torch
        out = np.zeros((len(prompts), self.dim), dtype=np.float32)
        row = 0
        with torch.inference_mode():
            for chunk in batches(prompts, self.batch_size):
                enc = self.tokenizer(list(chunk), padding=True, truncation=True,
                                     max_length=self.context_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()
                       if k in ("input_ids", "attention_mask")}
                feats = _features(self.model.get_text_features(**enc))
                out[row:row + len(chunk)] = feats.float().cpu().numpy()
                row += len(chunk)
        return l2_normalise(out)
