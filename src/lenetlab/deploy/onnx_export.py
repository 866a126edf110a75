"""``lenetlab export --format onnx``: the float model as ONNX, checked against PyTorch.

Two graphs are written, both with a dynamic batch axis and the output
``logits`` (N, num_classes), the trained model's own logits:

- ``model.onnx``: input ``input``, float32 (N, 1, H + 2 pad, W + 2 pad), the
  *normalised and padded* image, exactly what the PyTorch model's forward
  takes (``lenetlab.data.transforms.to_model_input``). Use it when the
  caller already normalises, or to compare with the PyTorch model.
- ``model_uint8.onnx``: input ``pixels``, uint8 (N, H, W), raw pixels. The
  run's normalisation x = scale * p + shift and the border of ``pad``
  background cells (value ``shift``) are part of the graph, so a deployment
  feeds the image as it comes (the same contract as the flat runtimes).

``model.onnx.json`` records the input/output names, shapes, dtypes and the
normalisation (scheme, scale, shift, pad), plus the check below.

The graphs compute the PyTorch forward op for op, with one deliberate
exception: the 1998 model's RBF output is summed as (x - w)^2 in float64 and
rounded once to float32 (:class:`RBF64`, the flat format's rule), where
PyTorch expands ||x||^2 - 2 x.w + ||w||^2 in float32, which alone costs
~4e-5 of rounding at distances of a few hundred; the float64 sum removes that
part of the error, so the graph is closer to the exact function than the
float32 expansion (and than PyTorch).

Both graphs come from ``torch.onnx.export(..., dynamo=True)`` (torch.export
plus onnxscript; about a second per graph on 2 CPU cores) and are validated
before anything is written: ``onnx.checker`` (full check), then onnxruntime
runs a fixed batch of synthetic uint8 images (blank, saturated, random and
sparse "stroke" images, :data:`CHECK_IMAGES` of them, and once more as a
batch of one to exercise the dynamic axis); every logit must be within
``TOLERANCE + REL_TOLERANCE * max|PyTorch logit|`` of PyTorch's, else the
export fails. That is ~1.4e-4 for the modern model (logits of ~10) and
~1e-3 for the 1998 model, whose RBF logits reach a few hundred: there two
float32 evaluations of the same network (PyTorch's and onnxruntime's)
legitimately differ by ~1e-4, because PyTorch's own logits are up to ~1e-4
(real digits) to ~2e-4 (noise images) away from a float64 evaluation of the
same weights. A translation mistake (wrong op, normalisation or padding
value) is off by orders of magnitude more. The measured difference is
recorded in the JSON. On the 10k MNIST test images (trained test runs):
~2e-6 for lenet5; ~1.2e-4 for lenet5_classic, whose ONNX logits are ~6e-5
from the float64 evaluation, closer than PyTorch's own ~1e-4 (see
tests/test_deploy_onnx.py).

int8 (``--int8``) is refused with a clear error rather than approximated:
the flat int8 model's integer requantisation (fixed-point multiplier and
shift rounding half away from zero, look-up-table activations, integer RBF)
cannot be expressed with ONNX's QDQ/QLinear operators, which round half to
even through float scales, so such a graph would disagree with the int8 file
it claims to be. A bit-exact graph would need hand-built integer arithmetic
(MatMulInteger, int64 Mul/Div, Gather look-ups) and is not implemented. Use
``--format flat|c|web --int8`` for integer inference.

onnx, onnxruntime and onnxscript are imported only when this exporter runs;
without them the export is a one-line error naming ``pip install 'lenetlab[onnx]'``.

Example::

    from lenetlab.deploy.export import export
    export("runs/demo", "onnx", out="runs/demo/onnx")
    # python: onnxruntime.InferenceSession("runs/demo/onnx/model_uint8.onnx")
    #         .run(["logits"], {"pixels": images_u8})[0]
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from copy import deepcopy
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import torch
from torch import nn

from lenetlab.config import DataConfig
from lenetlab.data.transforms import scale_shift, to_model_input
from lenetlab.deploy.export import ExportContext, Exporter
from lenetlab.errors import LenetlabError
from lenetlab.fileio import atomic_write_bytes, atomic_write_json
from lenetlab.registry import register

INPUT, PIXELS, OUTPUT = "input", "pixels", "logits"
FLOAT_FILE, PIXELS_FILE, META_FILE = "model.onnx", "model_uint8.onnx", "model.onnx.json"
TOLERANCE = 1e-4        # max |onnxruntime - PyTorch| over the check batch ...
REL_TOLERANCE = 4e-6    # ... plus this much of the largest |logit| (float32 noise of large RBF logits)
CHECK_IMAGES = 64
INSTALL_HINT = "pip install 'lenetlab[onnx]'"
INT8_UNSUPPORTED = (
    "int8 ONNX export is not supported: the flat int8 model's integer requantisation (fixed-point "
    "multiplier and shift, rounding half away from zero, look-up-table activations) cannot be expressed "
    "with ONNX's QDQ/QLinear operators, and a bit-exact integer graph is not implemented; export the float "
    "model (drop --int8), or use --format flat, c or web with --int8")


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """Import onnx and onnxruntime (and check onnxscript, which the dynamo exporter needs)."""
    mods, missing = {}, []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            mods[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise LenetlabError(f"ONNX export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")
    return mods["onnx"], mods["onnxruntime"]


class RBF64(nn.Module):
    """Export stand-in for :class:`~lenetlab.models.classic.RBFOutput`: the same distances, summed in float64.

    PyTorch's RBF expands ||x||^2 - 2 x.w + ||w||^2 in float32; at the classic model's distances (a few
    hundred) that carries ~4e-5 of rounding. Summing (x - w)^2 in float64 and rounding once (the flat
    format's rule for RBF) leaves only the float32 noise of the features.
    """

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.to(torch.float64).unsqueeze(1) - self.centres.to(torch.float64).unsqueeze(0)
        return (d * d).sum(-1).to(x.dtype)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for export: every RBFOutput replaced by :class:`RBF64` (otherwise unchanged)."""
    from lenetlab.models.classic import RBFOutput

    if not any(isinstance(m, RBFOutput) for m in model.modules()):
        return model
    copy = deepcopy(model)
    for parent in list(copy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RBFOutput):
                setattr(parent, name, RBF64(child.centres))
    return copy.eval()


class WithPreprocessing(nn.Module):
    """uint8 pixels (N, H, W) -> logits: ``to_model_input`` (normalise, pad) then the model."""

    def __init__(self, model: nn.Module, data: DataConfig):
        super().__init__()
        self.model = model
        self.data = data

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(to_model_input(pixels, self.data))


def check_images(hw: tuple[int, int], n: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """A fixed uint8 batch (n, H, W): blank, saturated, uniform noise and sparse strokes."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
    imgs[n // 2:] *= (rng.random((n - n // 2, *hw)) < 0.2).astype(np.uint8)   # mostly background, like digits
    imgs[0], imgs[1] = 0, 255
    return imgs


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's log lines and warnings (e.g. 'torchvision is not installed')."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def to_onnx(module: nn.Module, example: torch.Tensor, input_name: str) -> bytes:
    """Serialized ONNX of ``module(example)`` with a dynamic batch axis (torch.onnx dynamo exporter)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[input_name],
                                        output_names=[OUTPUT], dynamic_shapes=({0: batch},), verbose=False)
    except Exception as e:   # an exporter failure names the model, not a torch traceback
        raise LenetlabError(f"torch.onnx.export failed for {type(module).__name__}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return program.model_proto.SerializeToString()


def tolerance(reference: np.ndarray) -> float:
    """Allowed max |onnxruntime - PyTorch| for logits ``reference``."""
    return TOLERANCE + REL_TOLERANCE * float(np.abs(reference).max(initial=0.0))


def check(onnx_bytes: bytes, feed: np.ndarray, reference: np.ndarray, input_name: str, what: str) -> float:
    """onnx.checker, then onnxruntime on ``feed`` (whole batch and a batch of one) vs ``reference``.

    Returns the max abs difference; raises :class:`LenetlabError` above :func:`tolerance`.
    """
    onnx, ort = require_onnx()
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except onnx.checker.ValidationError as e:
        raise LenetlabError(f"{what}: the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], {input_name: feed})[0]
    one = sess.run([OUTPUT], {input_name: feed[-1:]})[0]
    if got.shape != reference.shape or one.shape != reference[-1:].shape:
        raise LenetlabError(f"{what}: onnxruntime gives shape {got.shape}, PyTorch {reference.shape}")
    diff = max(float(np.abs(got - reference).max()), float(np.abs(one - reference[-1:]).max()))
    if not diff <= tolerance(reference):   # also catches NaN
        raise LenetlabError(f"{what}: onnxruntime differs from PyTorch by {diff:.3g} "
                            f"(> {tolerance(reference):.3g})")
    return diff


def _opset(onnx_bytes: bytes) -> int:
    onnx, _ = require_onnx()
    proto = onnx.load_from_string(onnx_bytes)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


@register("exporter", "onnx")
class OnnxExporter(Exporter):
    """Float model as ONNX (normalised input, and raw uint8 pixels), checked with onnxruntime."""

    name = "onnx"

    def write(self, ctx: ExportContext, out: Path) -> list[Path]:
        if ctx.int8:
            raise LenetlabError(INT8_UNSUPPORTED)
        require_onnx()
        model, data = ctx.model, ctx.cfg.data
        input_shape = tuple(int(d) for d in getattr(model, "input_shape", ()))
        if len(input_shape) != 3 or input_shape[0] != 1:
            raise LenetlabError("ONNX export needs a single-channel model with an input_shape (1, H, W)")
        hw = (input_shape[1] - 2 * data.pad, input_shape[2] - 2 * data.pad)
        if min(hw) < 1:
            raise LenetlabError("model input is smaller than the data padding")
        was_training = model.training
        model.eval()
        try:
            images = check_images(hw)
            x = to_model_input(torch.from_numpy(images), data)
            with torch.no_grad():
                ref = model(x).numpy()
            t0 = time.perf_counter()
            graph_model = exportable(model)
            float_bytes = to_onnx(graph_model, x[:2], INPUT)
            diff_float = check(float_bytes, x.numpy(), ref, INPUT, FLOAT_FILE)
            t1 = time.perf_counter()
            pixel_bytes = to_onnx(WithPreprocessing(graph_model, data), torch.from_numpy(images[:2]), PIXELS)
            diff_pixels = check(pixel_bytes, images, ref, PIXELS, PIXELS_FILE)
            t2 = time.perf_counter()
        finally:
            model.train(was_training)

        scale, shift = scale_shift(data)
        num_classes = int(ref.shape[1])
        paths = [out / FLOAT_FILE, out / PIXELS_FILE, out / META_FILE]
        atomic_write_bytes(paths[0], float_bytes)
        atomic_write_bytes(paths[1], pixel_bytes)
        note = "x = scale * p + shift for a raw pixel p in 0..255; the border of `pad` cells holds shift"
        atomic_write_json(paths[2], {
            "format": "onnx", "model": ctx.cfg.model.name, "run_dir": str(ctx.run_dir), "dtype": "float32",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}", "opset": _opset(float_bytes),
            "normalisation": {"scheme": data.normalize, "scale": float(scale), "shift": float(shift),
                              "pad": int(data.pad), "image_hw": list(hw), "note": note},
            "graphs": [
                {"file": FLOAT_FILE, "input": {"name": INPUT, "dtype": "float32",
                                               "shape": ["batch", *input_shape], "normalised": True},
                 "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", num_classes]},
                 "max_abs_diff_vs_torch": diff_float, "export_and_check_seconds": round(t1 - t0, 3)},
                {"file": PIXELS_FILE, "input": {"name": PIXELS, "dtype": "uint8", "shape": ["batch", *hw],
                                                "normalised": False},
                 "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", num_classes]},
                 "max_abs_diff_vs_torch": diff_pixels, "export_and_check_seconds": round(t2 - t1, 3)},
            ],
            "check": {"images": CHECK_IMAGES, "tolerance": tolerance(ref),
                      "what": "synthetic uint8 images (blank, saturated, noise, sparse strokes); "
                              "onnxruntime CPU vs PyTorch logits"},
            "prediction": "argmax of logits",
        })
        return paths
