"""A tiny, randomly initialised CLIP checkpoint built offline for tests.

No pretrained CLIP weights exist on CI machines and hub downloads fail, so the
tests build a checkpoint of the real architecture (``CLIPModel``) with toy
sizes, a working byte-level BPE tokenizer and an image processor, and save
them with ``save_pretrained``. ``load_embedder(str(path))`` then loads it
through exactly the code path a downloaded checkpoint takes. Its embeddings
are meaningless (random weights); tests only check mechanics (shapes,
normalisation, determinism, batching), never that it "understands" images.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Image side the tiny vision tower expects (4 x 4 patches of 8 pixels).
IMAGE_SIZE = 32
#: Embedding size of the tiny model (CLIP's projection_dim).
PROJECTION_DIM = 16
#: Context length of the tiny text tower, as in real CLIP.
CONTEXT_LENGTH = 77


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> dict[str, int]:
    """Every byte, alone and as a word end (``x</w>``), plus CLIP's special tokens.

    Without merges the tokenizer spells each word out byte by byte, so any
    text tokenizes; that is all a random model needs.
    """
    vocab: dict[str, int] = {}
    for ch in _byte_level_alphabet():
        vocab[ch] = len(vocab)
    for ch in _byte_level_alphabet():
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny_clip(path, *, seed: int = 0) -> Path:
    """Save a tiny random CLIP (model, tokenizer, image processor) to ``path``.

    Sizes: 32x32 images, 8-pixel patches, hidden size 32, 2 layers, 2 heads,
    projection_dim 16. Deterministic for a given ``seed``.
    """
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    # The tokenizer files a real checkpoint ships: vocab.json + merges.txt.
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                              model_max_length=CONTEXT_LENGTH)

    text_cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2,
                              max_position_embeddings=CONTEXT_LENGTH, projection_dim=PROJECTION_DIM,
                              bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision_cfg = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, projection_dim=PROJECTION_DIM)
    config = CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(),
                        projection_dim=PROJECTION_DIM)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)

    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


if __name__ == "__main__":  # pragma: no cover - handy for poking at the model by hand
    import sys

    print(build_tiny_clip(sys.argv[1] if len(sys.argv) > 1 else "tiny-clip"))
