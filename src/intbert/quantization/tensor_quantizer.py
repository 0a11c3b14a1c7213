"""`TensorQuantizer`: the module that fake-quantizes one tensor, calibrates itself and saves its amax.

pytorch-quantization compatible: constructor, switch methods, properties, ``_amax`` state-dict key and
shapes (``[]`` per tensor, keep-dims such as ``[out, 1]`` per channel). Fixed here:

* a checkpoint's ``_amax`` loads onto the module's own device (upstream calls ``.cuda()``, which fails
  on CPU-only machines), and a module without amax accepts it without an "unexpected key";
* ``load_calib_amax(method=None, *, percentile=..., strict=True)`` takes both calling styles and says
  what is wrong instead of failing deep inside a calibrator (NVIDIA/TensorRT#3500);
* ``.half()`` / ``.to(bfloat16)`` keep the amax buffer in float32 (fp16 would round the scale);
* an uncalibrated quantizer used in eval mode warns (it silently ran in dynamic mode upstream).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn

from .calib import HistogramCalibrator, MaxCalibrator, amax_per_axis
from .calib.base import Calibrator
from .descriptor import QuantDescriptor
from .fake_quant import fake_tensor_quant, quant_bounds
from .tensor_quant import tensor_quant

__all__ = ["TensorQuantizer"]

_DYNAMIC_EVAL_WARNING = (
    "a TensorQuantizer has no amax and runs in dynamic mode (amax = max |x| of each tensor) in eval; "
    "calibrate it (intbert.quantization.calibrate_quantizers) or load a calibrated checkpoint"
)


def _make_calibrator(desc: QuantDescriptor) -> Calibrator:
    if desc.calib_method == "histogram":
        return HistogramCalibrator(desc.num_bits, desc.axis, desc.unsigned)
    return MaxCalibrator(desc.num_bits, desc.axis, desc.unsigned)


@contextmanager
def enable_onnx_export():
    """pytorch-quantization's context manager: sets ``TensorQuantizer.use_fb_fake_quant`` for the block, restores it.

    In intbert the flag changes nothing, and ``torch.onnx.export`` of a quantized model writes the fake
    quantization as float ops (Div/Round/Clip), not QuantizeLinear/DequantizeLinear: a graph no int8 runtime
    accelerates. So this warns once and names the exporter that writes Q/DQ nodes: ``intbert.export_onnx``.
    """
    warnings.warn("enable_onnx_export(): torch.onnx.export writes intbert's fake quantization as float ops, not "
                  "Q/DQ nodes; use intbert.export_onnx(model, path), which writes Q/DQ and checks the graph",
                  stacklevel=3)
    before = TensorQuantizer.use_fb_fake_quant
    TensorQuantizer.use_fb_fake_quant = True
    try:
        yield
    finally:
        TensorQuantizer.use_fb_fake_quant = before


class TensorQuantizer(nn.Module):
    """Fake-quantize a tensor with a calibrated, fixed, learned or dynamic ``amax``.

    ``forward(x)``: if disabled, return ``x``; if calibrating, feed ``x`` to the calibrator; if
    clipping, clamp ``x`` to ``[-amax, amax]`` (``[0, amax]`` unsigned); if quantizing, return
    ``fake_tensor_quant(x, amax * scale_amax, ...)`` (see `fake_quant` for the numerics). The amax is
    the ``_amax`` buffer, or, when there is none (dynamic mode), ``max |x|`` of the current tensor per
    ``axis``. Per-channel behaviour follows the amax's shape, so a ``[out, 1]`` amax loaded into a
    per-tensor quantizer still quantizes per row.

    Args:
        quant_desc: a `QuantDescriptor`.
        disabled: bypass entirely (``forward`` returns its input).
        if_quant: apply fake quantization.
        if_clip: clamp to ``[-amax, amax]`` before quantizing.
        if_calib: feed inputs to the calibrator.
    """

    # pytorch-quantization 2.1's ONNX switch; kept so that code setting it still runs. It has no
    # effect: intbert's export path chooses its own ops.
    use_fb_fake_quant = False

    def __init__(
        self,
        quant_desc: QuantDescriptor = QuantDescriptor(),
        disabled: bool = False,
        if_quant: bool = True,
        if_clip: bool = False,
        if_calib: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(quant_desc, QuantDescriptor):
            raise TypeError(f"quant_desc must be a QuantDescriptor, got {type(quant_desc).__name__}")
        self._num_bits = quant_desc.num_bits
        self._fake_quant = quant_desc.fake_quant
        self._scale = None  # real quantization (fake_quant=False) only: the peer's qmax / amax of the last call
        self._axis = quant_desc.axis
        self._scale_amax = quant_desc.scale_amax
        self._learn_amax = quant_desc.learn_amax
        self._unsigned = quant_desc.unsigned
        self._narrow_range = quant_desc.narrow_range
        self._name = quant_desc.name
        self._disabled = disabled
        self._if_quant = if_quant
        self._if_clip = if_clip
        self._if_calib = if_calib
        self._calibrator: Calibrator | None = _make_calibrator(quant_desc)
        # Where a new amax goes: a quantizer often has no tensor of its own, so `_apply` (called by
        # .to()/.cuda()) records the device it is moved to.
        self._device = torch.device("cpu")
        self._warned_dynamic = False
        if quant_desc.amax is not None:
            # Explicit CPU: under a `torch.device("meta")` context (transformers' from_pretrained) a plain
            # torch.tensor would be a meta tensor, whose values cannot be checked.
            self.amax = torch.tensor(quant_desc.amax, dtype=torch.float32, device="cpu")

    def __setattr__(self, name, value):
        # nn.Module.__setattr__ would register an nn.Parameter assigned to `amax` as a new parameter
        # named "amax", bypassing the property; route it through the setter instead.
        if name == "amax":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------- switches
    def enable(self) -> None:
        self._disabled = False

    def disable(self) -> None:
        self._disabled = True

    def enable_quant(self) -> None:
        self._if_quant = True

    def disable_quant(self) -> None:
        self._if_quant = False

    def enable_clip(self) -> None:
        self._if_clip = True

    def disable_clip(self) -> None:
        self._if_clip = False

    def enable_calib(self) -> None:
        if self._calibrator is None:
            raise RuntimeError("this quantizer has no calibrator; assign one to quantizer._calibrator first")
        self._if_calib = True

    def disable_calib(self) -> None:
        self._if_calib = False

    # --------------------------------------------------------------- properties
    @property
    def amax(self) -> torch.Tensor | None:
        """The stored amax (float32; 0-dim or keep-dims per channel), or ``None`` in dynamic mode."""
        return self._parameters.get("_amax", self._buffers.get("_amax"))

    @amax.setter
    def amax(self, value) -> None:
        """Set amax (number, list or tensor, all finite and >= 0). ``None`` removes it (dynamic mode).

        An existing amax is overwritten in place (it keeps its device and stays a Parameter if it is
        one); giving it a different shape raises ValueError, since the shape decides per-tensor versus
        per-channel and silently switching would change what the quantizer does.
        """
        if value is None:
            self._parameters.pop("_amax", None)
            self._buffers.pop("_amax", None)
            return
        if isinstance(value, torch.Tensor):
            t = value.detach().to(torch.float32)
        else:
            t = torch.as_tensor(value, dtype=torch.float32, device="cpu")  # CPU even under a meta-device context
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"amax must be finite and >= 0, got {t.tolist()!r}; pass abs(amax) or calibrate again")
        current = self.amax
        if current is None:
            self._register_amax(t)
            return
        if current.shape != t.shape:
            raise ValueError(
                f"amax shape change from {list(current.shape)} to {list(t.shape)}: the shape decides per-tensor "
                "vs per-channel; set quantizer.amax = None first if you mean to change it"
            )
        with torch.no_grad():
            current.copy_(t)

    def _register_amax(self, t: torch.Tensor) -> None:
        t = t.detach().to(device=self._device, dtype=torch.float32).clone()
        if self._learn_amax:
            self.register_parameter("_amax", nn.Parameter(t))
        else:
            self.register_buffer("_amax", t)

    @property
    def num_bits(self) -> int:
        return self._num_bits

    @num_bits.setter
    def num_bits(self, value: int) -> None:
        quant_bounds(value, self._unsigned)  # validates
        self._num_bits = value
        if self._calibrator is not None:
            self._calibrator.num_bits = value

    @property
    def unsigned(self) -> bool:
        return self._unsigned

    @unsigned.setter
    def unsigned(self, value: bool) -> None:
        """As pytorch-quantization's setter; the calibrator follows (its statistics are of |x| either way)."""
        quant_bounds(self._num_bits, bool(value))  # validates
        self._unsigned = bool(value)
        if self._calibrator is not None:
            self._calibrator.unsigned = self._unsigned

    @property
    def pre_quant_scale(self) -> torch.Tensor | None:
        """Per-channel factors the input is multiplied by before anything else (calibration, clipping,
        quantization): SmoothQuant / AWQ-style scaling, whose inverse the caller folds into the previous layer.
        ``None`` (the default) leaves the input as it is. Saved in the state dict as ``_pre_quant_scale``."""
        return self._buffers.get("_pre_quant_scale")

    @pre_quant_scale.setter
    def pre_quant_scale(self, value) -> None:
        if value is None:
            self._buffers.pop("_pre_quant_scale", None)
            return
        t = torch.as_tensor(value, dtype=torch.float32).detach()
        if t.device.type != "meta" and (not bool(torch.isfinite(t).all()) or bool((t <= 0).any())):
            raise ValueError("pre_quant_scale must be positive and finite (a zero would erase a channel); "
                             f"got values {t.min().item():.3g}..{t.max().item():.3g}")
        self.register_buffer("_pre_quant_scale", t.to(self._device).clone())

    @property
    def narrow_range(self) -> bool:
        return self._narrow_range

    @narrow_range.setter
    def narrow_range(self, value: bool) -> None:
        self._narrow_range = bool(value)

    @property
    def axis(self):
        return self._axis

    @property
    def fake_quant(self) -> bool:
        return self._fake_quant

    @property
    def learn_amax(self) -> bool:
        return self._learn_amax

    @property
    def scale(self):
        """Fake quantization: 1.0 (values stay in the input's scale). Real quantization (``fake_quant=False``): the
        peer's ``qmax / amax`` of the last call (``inputs ~= outputs / scale``), None before the first."""
        return 1.0 if self._fake_quant else self._scale

    @property
    def maxbound(self) -> int:
        """``qmax = 2^(b - 1 + unsigned) - 1``."""
        return quant_bounds(self._num_bits, self._unsigned)[1]

    @property
    def step_size(self) -> torch.Tensor | None:
        """``amax / qmax``: the value of one integer level (``None`` without amax)."""
        amax = self.amax
        return None if amax is None else amax.detach() / self.maxbound

    @property
    def calibrator(self) -> Calibrator | None:
        return self._calibrator

    # -------------------------------------------------------------- calibration
    def load_calib_amax(self, method: str | None = None, *, percentile: float = 99.99, strict: bool = True, **kwargs):
        """Compute amax from the calibrator and store it; returns the new amax.

        ``method`` is ``None`` or ``"max"`` for a max calibrator, and ``"percentile"``, ``"mse"`` or
        ``"entropy"`` for a histogram calibrator (``percentile`` and the ``start_bin``/``stride``
        keywords go to the histogram). If the calibrator collected nothing (the quantizer never ran),
        ``strict`` raises RuntimeError; ``strict=False`` warns and leaves the quantizer as it was
        (upstream sets a NaN amax, which turns every output into NaN).
        """
        calib = self._calibrator
        if calib is None:
            raise RuntimeError("this quantizer has no calibrator to load amax from")
        if isinstance(calib, MaxCalibrator):
            if method not in (None, "max") or kwargs:
                raise ValueError(
                    f"a max calibrator only computes 'max' (got method={method!r}, {kwargs or ''}); build the "
                    "quantizer with calib_method='histogram' for percentile/mse/entropy"
                )
            amax = calib.compute_amax()
        elif isinstance(calib, HistogramCalibrator):
            if method is None:
                raise ValueError("a histogram calibrator needs method='percentile', 'mse' or 'entropy'")
            amax = calib.compute_amax(method, percentile=percentile, **kwargs)
        else:
            amax = calib.compute_amax(method, percentile=percentile, **kwargs)
        if amax is None:
            message = (
                "the calibrator collected no data: this quantizer did not run while calibrating "
                "(call enable_calib() and run batches through the model)"
            )
            if strict:
                raise RuntimeError(message + "; pass strict=False to leave it uncalibrated")
            warnings.warn(message + "; leaving it uncalibrated", stacklevel=2)
            return None
        self.amax = amax
        return self.amax

    # ------------------------------------------------------------------ forward
    def _current_amax(self, x: torch.Tensor) -> torch.Tensor:
        amax = self.amax
        if amax is None:
            if not self.training and not self._if_calib and not self._warned_dynamic:
                self._warned_dynamic = True
                warnings.warn(_DYNAMIC_EVAL_WARNING, stacklevel=3)
            amax = amax_per_axis(x, self._axis).to(torch.float32)
        if self._scale_amax is not None:
            amax = amax * self._scale_amax
        return amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._disabled:
            return x
        pre = self.pre_quant_scale
        if pre is not None:
            x = x * pre.to(x.dtype)
        if self._if_calib:
            if self._calibrator is None:
                raise RuntimeError("calibration is on but this quantizer has no calibrator")
            self._calibrator.collect(x)
        out = x
        if self._if_clip or self._if_quant:
            amax = self._current_amax(x)
            if self._if_clip:
                # Plain clamp: gradients reach amax where it clips (PACT) when amax is learned.
                hi = amax.to(x.dtype)
                out = torch.minimum(torch.maximum(out, torch.zeros_like(hi) if self._unsigned else -hi), hi)
            if self._if_quant and self._fake_quant:
                out = fake_tensor_quant(out, amax, self._num_bits, self._unsigned, self._narrow_range)
            elif self._if_quant:  # the peer's real quantization: integers, with the reciprocal scale kept
                out, self._scale = tensor_quant(out, amax, self._num_bits, self._unsigned, self._narrow_range)
        return out

    # --------------------------------------------------------- device and state
    def _apply(self, fn, recurse: bool = True):
        try:
            self._device = fn(torch.empty(0, device=self._device)).device
        except NotImplementedError:  # leaving the meta device: no data to copy, but the target is known
            self._device = fn(torch.empty(0)).device
        # Take the amax buffer out so that .half()/.bfloat16() only move it: rounding it to 16 bits
        # and back would change the scale. (A learned amax is a Parameter and follows the module.)
        kept = {name: self._buffers.pop(name) for name in ("_amax", "_pre_quant_scale") if name in self._buffers}
        try:
            result = super()._apply(fn, recurse)
        finally:
            for name, t in kept.items():  # (the pre-quant scale likewise stays float32)
                moved = fn(t)
                if moved.dtype != torch.float32:
                    moved = t.to(device=moved.device, dtype=torch.float32)
                self._buffers[name] = moved
        return result

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        pre = prefix + "_pre_quant_scale"
        if pre in state_dict and self.pre_quant_scale is None:
            self.pre_quant_scale = torch.ones(state_dict[pre].shape)  # registered, then filled by the loader
        key = prefix + "_amax"
        if key in state_dict:
            source = state_dict[key]
            current = self.amax
            if current is not None and current.shape != source.shape:
                warnings.warn(
                    f"{key}: checkpoint amax has shape {list(source.shape)}, the module {list(current.shape)}; "
                    "using the checkpoint's (it decides per-tensor vs per-channel)",
                    stacklevel=2,
                )
                self.amax = None
                current = None
            if current is None:
                # Register first, on this module's device, so the default loader below copies into it
                # instead of reporting an unexpected key.
                self._register_amax(source)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        parts = [f"{self._num_bits}bit"]
        if self._unsigned:
            parts.append("unsigned")
        elif self._narrow_range:
            parts.append("narrow")
        parts.append("fake" if self._fake_quant else "real")
        if self.pre_quant_scale is not None:
            parts.append("pre_quant_scale")
        parts.append("per-tensor" if self._axis is None else f"axis={self._axis}")
        amax = self.amax
        if amax is None:
            parts.append("amax=dynamic")
        elif amax.numel() == 1:
            parts.append(f"amax={amax.item():.4f}")
        else:
            parts.append(f"amax=[{amax.min().item():.4f}, {amax.max().item():.4f}]({amax.numel()})")
        if self._learn_amax:
            parts.append("learn_amax")
        if self._scale_amax is not None:
            parts.append(f"scale_amax={self._scale_amax}")
        if self._calibrator is not None:
            parts.append(f"calibrator={type(self._calibrator).__name__}")
        if self._disabled:
            parts.append("disabled")
        else:
            parts.extend(flag for flag, on in (("quant", self._if_quant), ("clip", self._if_clip), ("calib", self._if_calib)) if on)
        return " ".join(parts)
