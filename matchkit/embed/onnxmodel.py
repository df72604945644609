"""Any ONNX image-embedding model, run through ONNX Runtime on the CPU.

A model is a ``.onnx`` file plus a description of what it expects, because
an ONNX graph says what tensor it takes but not how the picture becomes that
tensor: size and resize policy, channel layout (NCHW or NHWC), element type,
scaling and mean/std normalisation, RGB or BGR order. Whatever the graph's
input declares (fixed size, layout, dtype) is used when the description
leaves it out, and contradictions are refused at load time rather than
producing wrong vectors quietly.

onnxruntime is imported when a model is loaded; it comes with the
``matchkit[onnx]`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from matchkit.embed.base import Embedder, EmbedderError, ModelNotFound, as_rgb, batches, l2_normalise

ONNX_INSTALL = "pip install 'matchkit[onnx]'"

_RESIZE = ("exact", "shortest", "center_crop")
_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes the model's input tensor.

    ``resize``: "exact" stretches to ``size`` (h, w); "shortest" scales the short
    side to ``size[0]`` keeping the aspect ratio (the graph must accept any
    height and width); "center_crop" does the same then crops the centre
    ``size`` square/rectangle. Float inputs are ``pixel * scale``, then
    ``(x - mean) / std`` per channel when mean and std are given; uint8 inputs
    are passed as raw pixels (the graph normalises).
    """

    size: tuple[int, int] | None = None
    resize: str = "exact"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: str = "RGB"
    resample: str = "bilinear"

    def __post_init__(self):
        if self.resize not in _RESIZE:
            raise EmbedderError(f"resize must be one of {', '.join(_RESIZE)}, not {self.resize!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise EmbedderError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if self.dtype not in _DTYPES:
            raise EmbedderError(f"dtype must be one of {', '.join(_DTYPES)}, not {self.dtype!r}")
        if self.channels not in ("RGB", "BGR"):
            raise EmbedderError(f"channels must be RGB or BGR, not {self.channels!r}")
        if self.resample not in _RESAMPLE:
            raise EmbedderError(f"resample must be one of {', '.join(_RESAMPLE)}")
        if (self.mean is None) != (self.std is None):
            raise EmbedderError("give both mean and std, or neither")
        if self.mean is not None:
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
                raise EmbedderError("mean and std need 3 values each (std > 0)")
            if self.dtype == "uint8":
                raise EmbedderError("a uint8 input cannot be mean/std normalised; "
                                    "the graph must do it (drop mean and std)")
        if self.size is None:
            raise EmbedderError("the model's input size is not fixed in the graph; give `size`")

    def resized(self, image: Image.Image) -> Image.Image:
        h, w = self.size
        rs = _RESAMPLE[self.resample]
        if self.resize == "exact":
            return image.resize((w, h), rs)
        side = h
        iw, ih = image.size
        s = side / min(iw, ih)
        nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
        image = image.resize((nw, nh), rs)
        if self.resize == "center_crop":
            left, top = (nw - w) // 2, (nh - h) // 2
            image = image.crop((left, top, left + w, top + h))
        return image

    def tensor(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Batch of same-sized RGB images -> model input."""
        x = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # N,H,W,3
        if self.channels == "BGR":
            x = x[..., ::-1]
        if self.dtype != "uint8":
            x = x.astype(np.float32) * np.float32(self.scale)
            if self.mean is not None:
                x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=_DTYPES[self.dtype])


def _size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise EmbedderError(f"size must be an int or [height, width], not {value!r}")


class ONNXEmbedder(Embedder):
    """Image embeddings from an ONNX model (image side only; ``has_text`` is False).

    Parameters mirror the model config fields: ``input``/``output`` tensor names
    (default: the graph's first), ``normalize`` (L2-normalise outputs; set False
    only for graphs that already end in a normalisation; their outputs are then
    checked to be unit length), ``threads`` (ONNX Runtime intra-op threads,
    0 = its default), and the :class:`Preprocess` fields (``size``, ``resize``,
    ``layout``, ``dtype``, ``scale``, ``mean``, ``std``, ``channels``,
    ``resample``); layout, dtype and size default to what the graph declares.
    """

    has_text = False

    def __init__(self, path: str | os.PathLike, *, name: str | None = None,
                 batch_size: int = 32, threads: int = 0, input: str | None = None,
                 output: str | None = None, normalize: bool = True, dim: int | None = None,
                 size=None, resize: str | None = None, layout: str | None = None,
                 dtype: str | None = None, scale: float = 1.0 / 255.0, mean=None, std=None,
                 channels: str = "RGB", resample: str = "bilinear", device: str = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelNotFound(f"ONNX models need onnxruntime; install it with {ONNX_INSTALL}") from exc
        if device not in ("cpu", "auto"):
            raise EmbedderError("ONNX models run on the CPU here (device must be 'cpu')")
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"ONNX model file {path} does not exist")
        self.path = path
        self.name = name or str(path.resolve())
        self.batch_size = max(1, int(batch_size))
        self.normalize = bool(normalize)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise EmbedderError(f"{path} is not a loadable ONNX model: {exc}") from exc

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.input_name = input or next(iter(inputs))
        self.output_name = output or next(iter(outputs))
        if self.input_name not in inputs:
            raise EmbedderError(f"{path.name} has no input {self.input_name!r} "
                                f"(inputs: {', '.join(inputs)})")
        if self.output_name not in outputs:
            raise EmbedderError(f"{path.name} has no output {self.output_name!r} "
                                f"(outputs: {', '.join(outputs)})")
        spec = inputs[self.input_name]
        shape = list(spec.shape)
        if len(shape) != 4:
            raise EmbedderError(f"input {self.input_name!r} has shape {shape}; an image model "
                                "takes a 4-d batch (NCHW or NHWC)")
        graph_dtype = _ORT_TYPES.get(spec.type)
        if graph_dtype is None:
            raise EmbedderError(f"input type {spec.type} is not supported "
                                f"(supported: {', '.join(_ORT_TYPES)})")
        if dtype is not None and dtype != graph_dtype:
            raise EmbedderError(f"config says dtype {dtype} but the graph takes {graph_dtype}")
        graph_layout = ("NCHW" if shape[1] == 3 else "NHWC" if shape[3] == 3 else None)
        layout = layout or graph_layout
        if layout is None:
            raise EmbedderError(f"cannot tell the channel layout from input shape {shape}; "
                                "give layout = 'NCHW' or 'NHWC'")
        if graph_layout is not None and layout != graph_layout:
            raise EmbedderError(f"config says layout {layout} but the graph input is {shape}")
        hw = shape[2:4] if layout == "NCHW" else shape[1:3]
        fixed = tuple(hw) if all(isinstance(v, int) and v > 0 for v in hw) else None
        size = _size(size) or fixed
        resize = resize or "exact"
        if fixed is not None and size != fixed:
            raise EmbedderError(f"config size {size} differs from the graph's fixed input {fixed}")
        if fixed is not None and resize == "shortest":
            raise EmbedderError("resize 'shortest' needs a graph that accepts any height and width")
        self.preprocess = Preprocess(
            size=size, resize=resize, layout=layout, dtype=graph_dtype, scale=float(scale),
            mean=tuple(mean) if mean is not None else None,
            std=tuple(std) if std is not None else None, channels=channels, resample=resample)
        self._fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

        out_shape = list(outputs[self.output_name].shape)
        out_dim = None
        if len(out_shape) >= 2 and all(isinstance(v, int) and v > 0 for v in out_shape[1:]):
            out_dim = int(np.prod(out_shape[1:]))
        if out_dim is None:  # dynamic output: ask the graph once
            probe = Image.new("RGB", (size[1], size[0]), (128, 128, 128))
            out_dim = self._run([self.preprocess.resized(probe)]).shape[1]
        if dim is not None and int(dim) != out_dim:
            raise EmbedderError(f"config says dim {dim} but the model outputs {out_dim}")
        self.dim = int(out_dim)

    def _run(self, images: list[Image.Image]) -> np.ndarray:
        x = self.preprocess.tensor(images)
        if self._fixed_batch is not None and len(images) != self._fixed_batch:
            return np.concatenate([self._run([im]) for im in images]) if self._fixed_batch == 1 \
                else self._padded(x, len(images))
        try:
            (y,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as exc:
            raise EmbedderError(f"{self.path.name} failed on a batch of shape {x.shape}: "
                                f"{str(exc).splitlines()[0][:300]}") from exc
        return np.asarray(y, dtype=np.float32).reshape(len(images), -1)

    def _padded(self, x: np.ndarray, n: int) -> np.ndarray:
        """A graph with a fixed batch size B > 1: run full batches, pad the last."""
        b = self._fixed_batch
        rows = []
        for start in range(0, n, b):
            part = x[start:start + b]
            if len(part) < b:
                part = np.concatenate([part, np.repeat(part[-1:], b - len(part), axis=0)])
            (y,) = self.session.run([self.output_name], {self.input_name: part})
            rows.append(np.asarray(y, dtype=np.float32).reshape(b, -1))
        return np.concatenate(rows)[:n]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        prepared = [self.preprocess.resized(as_rgb(im)) for im in images]
        out = np.zeros((len(prepared), self.dim), dtype=np.float32)
        for start_chunk in batches(list(range(len(prepared))), self.batch_size):
            # "shortest" resizing keeps aspect ratios: only same-sized images share a batch.
            by_size: dict[tuple[int, int], list[int]] = {}
            for i in start_chunk:
                by_size.setdefault(prepared[i].size, []).append(i)
            for rows in by_size.values():
                y = self._run([prepared[i] for i in rows])
                if y.shape[1] != self.dim:
                    raise EmbedderError(f"model output has {y.shape[1]} values, expected {self.dim}")
                out[rows] = y
        if self.normalize:
            return l2_normalise(out)
        norms = np.linalg.norm(out, axis=1)
        if len(out) and not np.allclose(norms, 1.0, atol=1e-2):
            raise EmbedderError(f"{self.name}: normalize = false but the model's outputs are not "
                                f"unit length (norms {norms.min():.3f}..{norms.max():.3f})")
        return l2_normalise(out)
