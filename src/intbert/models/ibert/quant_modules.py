"""I-BERT quant modules: the simulated (trainable) side of the integer functions in ``intops``.

Every module keeps the transformers port's constructor signature, buffer names and the
``forward(...) -> (tensor, scaling_factor)`` contract, so code and checkpoints written against
the quant modules of transformers' I-BERT port work unchanged. Inside, the forward value is computed by
the exact integer functions of :mod:`intbert.quantization.intops` and multiplied by the scale;
gradients are straight-through (identity for requantization and weight rounding, the float
function's gradient for GELU, softmax and LayerNorm). The port's plain constant attributes (``k``, ``const``,
``coeff``/``coef``, ``x0``, ``max_bit``, ``dim_sqrt``, ``percentile``/``percentile_mode``) are not kept: they are
no state-dict entries and nothing read them; the constants are named in ``intops``.

Exact integers between modules: the tensors passed between modules are float values ``q * S``.
Integers above 2^24 (GEMM accumulators, i-GELU and LayerNorm outputs) are not exact in float32, so
each module also attaches its exact integers (int8/int32, int64 where wider) to the tensor it returns (``_intbert_q``, checked
against the tensor's version counter so an in-place change invalidates them); the next module uses
them when present and otherwise rounds ``x / S``. Values stay in the caller's float dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import OverflowRiskError, UncalibratedError
from ...quantization import fused, intops
from .configuration_ibert import FORCE_DEQUANT_CHOICES

#: QuantAct ranges start here; a range still at these values was never calibrated (the reference's sentinel).
RANGE_SENTINEL = 1e-5
#: QuantLinear consumes activations of this many bits (every QuantAct before a linear is 8-bit).
LINEAR_INPUT_BITS = 8


def check_force_dequant(value: str) -> None:
    if value not in FORCE_DEQUANT_CHOICES:
        raise ValueError(f"force_dequant must be one of {FORCE_DEQUANT_CHOICES}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Carrying exact integers alongside float values
# --------------------------------------------------------------------------------------------


def _version(t: torch.Tensor) -> int | None:
    # Inference-mode tensors have no version counter (and cannot be modified in place outside it).
    return None if t.is_inference() else t._version


def attach_ints(value: torch.Tensor, q: torch.Tensor, bits: int = intops.REQUANT_NARROW_BITS) -> torch.Tensor:
    """Record the exact integers of ``value`` (= q * S) on the tensor itself, with their bound |q| < 2^bits."""
    value._intbert_q = (q, _version(value), bits)
    return value


def _attached(x: torch.Tensor):
    tag = getattr(x, "_intbert_q", None)
    if tag is not None and tag[1] == _version(x) and tag[0].shape == x.shape:
        return tag
    return None


def ints_of(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The exact integers of a simulated tensor: the attached ones, else round_half_even(x / S)."""
    tag = _attached(x)
    return tag[0] if tag is not None else intops.to_int(x.detach(), scale)


def int_bits_of(x: torch.Tensor) -> int:
    """The bound 2^bits on |integers of x|: what the producing module attached, else int32 (to_int clamps)."""
    tag = _attached(x)
    return tag[2] if tag is not None else intops.REQUANT_NARROW_BITS


def straight_through(value: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """Forward ``value``, backward through ``reference`` (None: no gradient needed)."""
    if reference is None:
        return value
    return reference + (value - reference).detach()


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _WeightCache:
    """Re-quantize a weight only when it may have changed, not on every forward.

    The reference re-quantizes every weight (38.6 M embedding entries for RoBERTa) on every call.
    Here the integers are recomputed when the module trains with gradients (QAT: every step), and
    otherwise only when a parameter's storage or version counter moved (``load_state_dict``,
    ``.to()``, optimizer steps, in-place edits under no_grad). Writes through ``.data`` bypass the
    version counter: call the module's ``train()``/``eval()`` afterwards (it clears the cache).
    """

    def __init__(self):
        self.key = None

    def stale(self, module: nn.Module, *params: torch.Tensor | None) -> bool:
        if module.training and torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params):
            self.key = None
            return True
        key = tuple((p.data_ptr(), p._version, p.device) for p in params if p is not None)
        if key == self.key:
            return False
        self.key = key
        return True

    def clear(self) -> None:
        self.key = None


class _CachedWeightMixin:
    """Clears the weight cache on train()/eval() so that ``.data`` writes are picked up there."""

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)


# --------------------------------------------------------------------------------------------
# QuantEmbedding
# --------------------------------------------------------------------------------------------


class QuantEmbedding(_CachedWeightMixin, nn.Module):
    """Embedding with a symmetric per-tensor ``weight_bit`` quantized table.

    forward(x) -> (embeddings, scale); scale is None when not quantizing. ``momentum`` and ``_weight``
    are accepted for signature compatibility (``_weight`` initializes the table).
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        padding_idx=None,
        max_norm=None,
        norm_type=2.0,
        scale_grad_by_freq=False,
        sparse=False,
        _weight=None,
        weight_bit=8,
        momentum=0.95,
        quant_mode=False,
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.dim = embedding_dim
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        if _weight is None:
            self.weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim))
        else:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(
                    f"_weight has shape {tuple(_weight.shape)}, expected ({num_embeddings}, {embedding_dim})"
                )
            self.weight = nn.Parameter(_weight)
        self.register_buffer("weight_scaling_factor", torch.zeros(1))
        self.register_buffer("weight_integer", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.weight_bit = weight_bit
        self.momentum = momentum
        self.quant_mode = quant_mode
        self._cache = _WeightCache()

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer table, scale): S = max|W| / (2^(b-1)-1), q = round_half_even(W / S) in [-(2^(b-1)-1), 2^(b-1)-1]."""
        if self._cache.stale(self, self.weight):
            with torch.no_grad():
                w = self.weight.detach()
                scale = intops.symmetric_scale(self.weight_bit, w.min().reshape(1), w.max().reshape(1))
                q = intops.quantize_by_scale(w, scale, self.weight_bit)
                self.weight_scaling_factor = scale.float()
                self.weight_integer = q.to(torch.int8 if self.weight_bit <= 8 else torch.int32)
        return self.weight_integer, self.weight_scaling_factor

    def forward(self, x, positions=None, incremental_state=None):
        args = (self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
        if not self.quant_mode:
            return F.embedding(x, self.weight, *args), None
        w_int, scale = self.quantized_weight()
        q = F.embedding(x, w_int)  # (..., D) int8 (int32 above 8 bits), |q| <= 2^(b-1)-1
        value = q.to(self.weight.dtype) * scale
        reference = F.embedding(x, self.weight, *args) if _needs_grad(self.weight) else None
        return attach_ints(straight_through(value, reference), q), scale


# --------------------------------------------------------------------------------------------
# QuantAct
# --------------------------------------------------------------------------------------------


class QuantAct(nn.Module):
    """Quantizes an activation to ``activation_bit`` bits, with an optional residual ``identity`` add.

    Range: in train mode the batch min/max of (x + identity) sets the range on the first batch and
    then moves by EMA, x_min <- m x_min + (1-m) min (m = act_range_momentum; m = -1 keeps a running
    min/max). In eval the range is frozen. S_out = max(|x_min|, |x_max|) / (2^(b-1)-1).

    Values: with an input scale (the usual case) the input integers are requantized with a dyadic
    multiplier, y = round_half_up(q_x * m / 2^e) [+ the same for the identity], clamped to
    [-2^(b-1), 2^(b-1)-1]; without one, x is quantized from float (round half to even) and an
    identity that has a scale is requantized and added (the transformers port drops it: fix (c)).
    Accepts 0-dim and (1,) scales.
    """

    def __init__(self, activation_bit, act_range_momentum=0.95, per_channel=False, channel_len=None, quant_mode=False):
        super().__init__()
        if per_channel and not channel_len:
            raise ValueError("QuantAct(per_channel=True) needs channel_len, the size of the last dim")
        self.activation_bit = activation_bit
        self.act_range_momentum = act_range_momentum
        self.quant_mode = quant_mode
        self.per_channel = per_channel
        size = channel_len if per_channel else 1
        self.register_buffer("x_min", torch.full((size,), -RANGE_SENTINEL))
        self.register_buffer("x_max", torch.full((size,), RANGE_SENTINEL))
        self.register_buffer("act_scaling_factor", torch.zeros(size))
        self._calibrated: bool | None = None  # None: not yet checked (checking syncs with the device once)
        self.batch_range = None  # set by a calibration method that measures ranges its own way (calibration.py)

    def extra_repr(self):
        return f"activation_bit={self.activation_bit}, quant_mode={self.quant_mode}, per_channel={self.per_channel}"

    def _load_from_state_dict(self, *args, **kwargs):
        self._calibrated = None
        super()._load_from_state_dict(*args, **kwargs)

    def is_calibrated(self) -> bool:
        if self._calibrated is None:
            self._calibrated = not bool(
                ((self.x_min == -RANGE_SENTINEL) & (self.x_max == RANGE_SENTINEL)).all()
            )
        return self._calibrated

    @torch.no_grad()
    def update_range(self, x: torch.Tensor) -> None:
        """Fold the batch range of ``x`` into x_min / x_max (no host synchronisation).

        The batch range is min/max, or what ``self.batch_range(x, activation_bit)`` returns when a
        calibration method sets one (per-tensor ranges only).
        """
        if self.per_channel:
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            bmin, bmax = flat.amin(0), flat.amax(0)
        elif self.batch_range is not None:
            bmin, bmax = self.batch_range(x.detach(), self.activation_bit)
        else:
            bmin, bmax = torch.aminmax(x.detach().float())
            bmin, bmax = bmin.reshape(1), bmax.reshape(1)
        fresh = (self.x_min > -1.1 * RANGE_SENTINEL) & (self.x_max < 1.1 * RANGE_SENTINEL)
        if self.act_range_momentum == -1:
            new_min, new_max = torch.minimum(self.x_min, bmin), torch.maximum(self.x_max, bmax)
        else:
            m = self.act_range_momentum
            new_min, new_max = m * self.x_min + (1 - m) * bmin, m * self.x_max + (1 - m) * bmax
        self.x_min.copy_(torch.where(fresh, bmin, new_min))
        self.x_max.copy_(torch.where(fresh, bmax, new_max))
        self._calibrated = True

    def forward(
        self,
        x,
        pre_act_scaling_factor=None,
        identity=None,
        identity_scaling_factor=None,
        specified_min=None,
        specified_max=None,
    ):
        x_act = x if identity is None else identity + x
        if self.training:
            self.update_range(x_act)
        if not self.quant_mode:
            return x_act, None
        if not self.training and specified_min is None and specified_max is None and not self.is_calibrated():
            raise UncalibratedError(
                "QuantAct ranges were never calibrated (still +-1e-5); run intbert.calibrate(model, batches) "
                "or a few train-mode forwards before evaluating a quant_mode model"
            )
        x_min = self.x_min if specified_min is None else intops.as_scale(specified_min, x)
        x_max = self.x_max if specified_max is None else intops.as_scale(specified_max, x)
        scale = intops.symmetric_scale(self.activation_bit, x_min, x_max)
        self.act_scaling_factor = scale.detach()
        with torch.no_grad():
            q = self._integers(x, pre_act_scaling_factor, identity, identity_scaling_factor, scale)
        value = q.to(x.dtype if x.dtype.is_floating_point else torch.float32) * scale
        reference = x_act if _needs_grad(x, identity) else None
        return attach_ints(straight_through(value, reference), q), scale

    def _integers(self, x, s_x, identity, s_id, scale) -> torch.Tensor:
        q = self._part(x, s_x, scale)
        if identity is not None:
            q = q + self._part(identity, s_id, scale)
        return q.clamp_(*intops.quant_bounds(self.activation_bit))

    @staticmethod
    def _part(t, s_t, scale) -> torch.Tensor:
        """Integers of one addend on the output grid: requantized when it has a scale, else rounded from float.

        Each addend is rounded separately and the sum clamped once (as the reference's FixedPointMul).
        """
        if s_t is None:
            q = torch.round(t.detach().double() / scale.double())
            return q.clamp(intops.INT32_MIN, intops.INT32_MAX).long()
        s_t = intops.as_scale(s_t, t)
        m, e = intops.requant_multiplier(s_t, scale)
        return fused.rescale(ints_of(t, s_t), m, e, int_bits_of(t))


def named_overflow(model: nn.Module, err: OverflowRiskError) -> OverflowRiskError:
    """``err`` with the name (in ``model``) of the module that raised it prefixed, when it says which (``err.module``)."""
    module = getattr(err, "module", None)
    names = {m: n for n, m in model.named_modules()}
    if module not in names:
        return err
    named = OverflowRiskError(f"{names[module] or type(model).__name__}: {err}")
    named.module = module
    return named


# --------------------------------------------------------------------------------------------
# QuantLinear
# --------------------------------------------------------------------------------------------


class _STELinear(torch.autograd.Function):
    """Returns the exact integer-linear value; backward is that of the float F.linear (straight-through)."""

    @staticmethod
    def forward(ctx, x, weight, bias, value):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return value

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class QuantLinear(_CachedWeightMixin, nn.Module):
    """Linear layer on integers: int8 input x int(weight_bit) weight, int32 bias, exact accumulation.

    S_w = max|W_row| / (2^(wb-1)-1) per output row (or per tensor), q_w = round_half_even(W / S_w) in the
    full range [-(2^(wb-1)-1), 2^(wb-1)-1] (the reference clamps to 126: fix (g)); S_b = S_w * S_x and
    q_b = round_half_even(b / S_b); y = q_x @ q_w^T + q_b (int64, exact) with scale S_b.
    forward(x, prev_act_scaling_factor) -> (y, S_b). ``bias=False`` works (the reference crashes: fix (d)).
    ``integer_bias(S_x)`` gives q_b for an input scale without a forward and without writing anything (freeze uses it).

    The bias must fit the int32 accumulator beside the GEMM: |q_b| <= 2^31 - 1 - K*128*2^(wb-1). The
    reference clamps it silently: an all-zero (pruned) row got S_w = 1e-8/127, so a bias of 1 needed
    q_b ~ 10^10 and came out as 0.0047. Such a row's scale is free (its integers are 0 at any scale), so
    per-channel quantization gives it the layer's largest row scale instead: its bias is then represented
    like its neighbours' (and its output scale stays in the range the next i-GELU accepts). Any other bias
    that does not fit raises ``OverflowRiskError`` naming the channel (``err.module`` is this module, so
    calibrate / freeze can name the layer).
    """

    def __init__(self, in_features, out_features, bias=True, weight_bit=8, bias_bit=32, per_channel=False, quant_mode=False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.register_buffer("weight_integer", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("fc_scaling_factor", torch.zeros(out_features))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
            self.register_buffer("bias_integer", torch.zeros(out_features, dtype=torch.int32))
        else:
            self.register_parameter("bias", None)
            self.bias_integer = None
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        self.per_channel = per_channel
        self.quant_mode = quant_mode
        self._cache = _WeightCache()
        self._bias_checked = False  # the bias bound held for the current weights (eval mode; see forward)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_bit={self.weight_bit}, per_channel={self.per_channel}, quant_mode={self.quant_mode}"
        )

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer weight [out, in], per-row scale [out]); recomputed only when the weight changed."""
        if self._cache.stale(self, self.weight):
            with torch.no_grad():
                w = self.weight.detach()
                if self.per_channel:
                    w_min, w_max = w.amin(dim=1), w.amax(dim=1)
                else:
                    w_min, w_max = w.min().expand(self.out_features), w.max().expand(self.out_features)
                scale = intops.symmetric_scale(self.weight_bit, w_min, w_max)
                q = intops.quantize_by_scale(w, scale[:, None], self.weight_bit)
                # An all-zero row's scale is free: the largest row scale, not 1e-8/127 (see the class docstring).
                scale = torch.where((q == 0).all(dim=1), scale.max(), scale)
                self.fc_scaling_factor = scale.float()
                self.weight_integer = q.to(torch.int8 if self.weight_bit <= 8 else torch.int32)
                # The GEMM operand, converted once: int_matmul runs integers through an exact float32 GEMM.
                self._weight_operand = q.t().float().contiguous()
                self._bias_checked = False
        return self.weight_integer, self.fc_scaling_factor

    def bias_limit(self) -> int:
        """The largest |q_b| the int32 accumulator holds beside the GEMM (and within ``bias_bit`` bits)."""
        a_bound, b_bound = self._gemm_bounds()
        # |sum_k q_x q_w| <= K * 128 * 2^(wb-1) = gemm_bound (50,331,648 for K = 3072): an exact int32 sum.
        gemm_bound = self.in_features * a_bound * b_bound
        # The int32 accumulator starts at the bias: |q_b| <= 2^31 - 1 - gemm_bound keeps the sum in int32.
        return min(intops.INT32_MAX - gemm_bound, 2 ** (self.bias_bit - 1) - 1)

    def _gemm_bounds(self) -> tuple[int, int]:
        """(|q_x| bound, |q_w| bound): 128 for the int8 input, 2^(wb-1) for the weight (int_matmul's bounds)."""
        lo, _ = intops.quant_bounds(LINEAR_INPUT_BITS)
        return -lo, 2 ** (self.weight_bit - 1)

    def _input_scale(self, prev_act_scaling_factor, like: torch.Tensor) -> torch.Tensor:
        if prev_act_scaling_factor is None:
            raise ValueError(
                "QuantLinear in quant_mode needs prev_act_scaling_factor, the scale of its (8-bit) input; "
                "quantize the input with a QuantAct first"
            )
        s_x = intops.as_scale(prev_act_scaling_factor, like)
        if s_x.numel() != 1:
            raise ValueError(
                f"QuantLinear needs a per-tensor input scale (0-dim or shape (1,)), got shape {tuple(s_x.shape)}"
            )
        return s_x

    def integer_bias(self, prev_act_scaling_factor) -> torch.Tensor | None:
        """The int32 bias q_b = round_half_even(b / (S_w * S_x)) for an input scale S_x; None without a bias.

        What the integer accumulator of a forward at that input scale starts from, computed afresh: it writes
        nothing (only the weight's quantization cache may be refreshed), so ``intbert.freeze`` asks for the bias
        at the scale it recorded rather than reading what the last forward left in ``bias_integer``. The bound is
        always checked here (one host sync): a bias beyond :meth:`bias_limit` raises ``OverflowRiskError`` naming
        the channel (``err.module`` is this module), also after an edit through ``.data`` that the forward's
        once-per-weights check in eval would miss.
        """
        s_x = self._input_scale(prev_act_scaling_factor, self.weight)
        if self.bias is None:
            return None
        _, s_w = self.quantized_weight()
        with torch.no_grad():
            return self._bias_integers(s_w.to(s_x.device) * s_x.reshape(()), check=True)

    def _bias_integers(self, s_b: torch.Tensor, check: bool) -> torch.Tensor:
        """round_half_even(b / S_b) as int32, checked against :meth:`bias_limit` when ``check``."""
        b = torch.round(self.bias.detach().double() / s_b.double())  # torch.round: half to even; exact in float64
        limit = self.bias_limit()
        if check:
            self._check_bias(b, limit)
        return b.clamp(-limit, limit).int()  # a no-op once checked; keeps an unchecked bias in int32

    def _check_bias(self, b: torch.Tensor, limit: int) -> None:
        """Raise if a bias integer does not fit beside the GEMM (one host sync)."""
        over = b.abs() > limit
        if bool(over.any()):
            c = int(over.nonzero()[0, 0])
            err = OverflowRiskError(
                f"QuantLinear({self.in_features} -> {self.out_features}) output channel {c}: bias "
                f"{float(self.bias[c]):.6g} is {float(b[c]):.4g} steps of its scale S_w*S_x, beyond the {limit} the "
                f"int32 accumulator has beside the GEMM; its weights (max |w| {float(self.weight[c].abs().max()):.3g}) "
                "are too small for the bias: fold the bias into the next layer or prune the channel"
            )
            err.module = self
            raise err

    def forward(self, x, prev_act_scaling_factor=None):
        if not self.quant_mode:
            return F.linear(x, self.weight, self.bias), None
        s_x = self._input_scale(prev_act_scaling_factor, x)
        _, s_w = self.quantized_weight()
        s_w = s_w.to(x.device)
        a_bound, b_bound = self._gemm_bounds()
        s_b = s_w * s_x.reshape(())
        with torch.no_grad():
            q_x = ints_of(x, s_x).clamp(-a_bound, a_bound - 1)  # the int8 range [-128, 127]
            acc = intops.int_matmul(q_x, self._weight_operand.to(x.device), a_bound, b_bound)
            if self.bias is not None:
                # The bound is checked (one host sync) on every forward in train mode, and in eval once per weights:
                # quantized_weight() resets the flag when it re-quantizes, as does train()/eval() (through the cache).
                b_int = self._bias_integers(s_b, check=self.training or not self._bias_checked)
                self._bias_checked = not self.training
                # bias_integer is still updated here, though nothing in intbert reads it back (freeze calls
                # integer_bias): it is a buffer of the transformers port, whose forward sets it the same way, so a
                # checkpoint saved after calibration carries the integer bias as the port's does, and code written
                # against the port that reads it finds the bias of the last forward (fixed in eval: the input scale is).
                self.bias_integer = b_int
                acc = acc + b_int
        value = acc.to(x.dtype) * s_b
        if _needs_grad(x, self.weight, self.bias):
            value = _STELinear.apply(x, self.weight, self.bias, value)
        return attach_ints(value, acc), s_b


# --------------------------------------------------------------------------------------------
# Non-linear integer functions
# --------------------------------------------------------------------------------------------


class IntGELU(nn.Module):
    """i-GELU (paper Alg. 2): GELU(x) = x/2 (1 + erf(x / sqrt 2)) with a second-order polynomial erf.

    forward(x, scaling_factor) -> (y, S_out); S_out is positive (the reference's is negative because
    a < 0; here the sign is folded into the integers). ``force_dequant`` "gelu"/"nonlinear" uses float GELU.
    """

    def __init__(self, quant_mode=True, force_dequant="none"):
        super().__init__()
        check_force_dequant(force_dequant)
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "gelu")
        self.activation_fn = nn.GELU()
        self._bounds_checked = False

    def forward(self, x, scaling_factor=None):
        if not self.quant_mode:
            return self.activation_fn(x), None
        scale = intops.as_scale(scaling_factor, x)
        if self.training or not self._bounds_checked:
            # One host sync; in eval the input scale is fixed, so the first forward checks it for good.
            if bool((scale < intops.GELU_MIN_INPUT_SCALE).any()):
                raise OverflowRiskError(
                    f"IntGELU input scale {scale.min().item():.3g} is below {intops.GELU_MIN_INPUT_SCALE:.3g}: "
                    "the i-GELU integers could overflow int64; widen the input range or use force_dequant='gelu'"
                )
            self._bounds_checked = not self.training
        b_int, c_int, one_int, s_out = intops.gelu_constants(scale)
        with torch.no_grad():
            q = fused.int_gelu(ints_of(x, scale), b_int, c_int, one_int)
        value = q.to(x.dtype) * s_out
        reference = self.activation_fn(x) if _needs_grad(x) else None
        return attach_ints(straight_through(value, reference), q, intops.GELU_OUTPUT_BITS), s_out


class IntSoftmax(nn.Module):
    """i-exp softmax (paper Alg. 3) over the last dim; output integers in [0, 2^output_bit - 1], scale 2^-output_bit.

    forward(x, scaling_factor, mask=None): ``mask`` is boolean, True = attend. Additive float masks
    (-inf or the dtype's minimum added to x) are also recognised. ``act`` (a 16-bit QuantAct) is
    kept for checkpoint compatibility; the integer exponentials use a fixed 2^-15 scale instead of a
    calibrated one, so it is not used.
    """

    #: Scores below this are an additive mask, not data (real scores are q_q.q_k * S, far smaller).
    MASKED_BELOW = -1e30

    def __init__(self, output_bit, quant_mode=False, force_dequant="none"):
        super().__init__()
        check_force_dequant(force_dequant)
        self.output_bit = output_bit
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "softmax")
        self.act = QuantAct(16, quant_mode=self.quant_mode)

    def forward(self, x, scaling_factor=None, mask=None):
        if not self.quant_mode:
            if mask is not None:
                x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
            return F.softmax(x, dim=-1), None
        scale = intops.as_scale(scaling_factor, x)
        finite = x > self.MASKED_BELOW
        keep = finite if mask is None else finite & mask
        with torch.no_grad():
            # Scores from an integer matmul carry their exact integers; only additive float masks need the where.
            q_in = ints_of(x if _attached(x) is not None else torch.where(finite, x, torch.zeros_like(x)), scale)
            q = fused.int_softmax(q_in, keep, intops.softmax_constants(scale), self.output_bit)
        out_scale = torch.full((1,), 2.0**-self.output_bit, device=x.device)
        value = q.to(x.dtype) * out_scale
        reference = F.softmax(x.masked_fill(~keep, torch.finfo(x.dtype).min), dim=-1) if _needs_grad(x) else None
        return attach_ints(straight_through(value, reference), q), out_scale


class IntLayerNorm(nn.Module):
    """Integer LayerNorm over the last dim with an exact integer square root.

    forward(x, scaling_factor) -> (y, S_out) with per-channel S_out = sqrt(C)/2^30 * |gamma|. ``shift``
    (a buffer) is the right shift that keeps sum((y >> shift)^2) < 2^32; it only grows, in train
    mode (calibration). ``activation`` is kept for checkpoint compatibility and is not used.
    """

    def __init__(self, normalized_shape, eps, output_bit=8, quant_mode=False, force_dequant="none"):
        super().__init__()
        check_force_dequant(force_dequant)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.quant_mode = quant_mode and force_dequant not in ("nonlinear", "layernorm")
        self.register_buffer("shift", torch.zeros(1))
        self.output_bit = output_bit
        self.activation = QuantAct(self.output_bit, quant_mode=self.quant_mode)

    def float_forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        y = x - mean
        var = (y * y).mean(dim=-1, keepdim=True)
        return y / torch.sqrt(self.eps + var) * self.weight + self.bias

    def forward(self, x, scaling_factor=None):
        if not self.quant_mode:
            return self.float_forward(x), None
        if scaling_factor is None:
            raise ValueError("IntLayerNorm in quant_mode needs the input's scaling_factor (from a QuantAct)")
        scale = intops.as_scale(scaling_factor, x)
        if scale.numel() != 1:
            raise ValueError(f"IntLayerNorm needs a per-tensor input scale, got shape {tuple(scale.shape)}")
        with torch.no_grad():
            q_in = ints_of(x, scale)
            if self.training:
                need = intops.layernorm_shift(q_in).to(self.shift.device, self.shift.dtype)
                self.shift.copy_(torch.maximum(self.shift, need))
            sign, bias_int, s_out = intops.layernorm_constants(self.weight.detach(), self.bias.detach(), x.shape[-1])
            q = fused.int_layernorm(q_in, self.shift.long(), sign, bias_int)
        value = q.to(x.dtype) * s_out
        reference = self.float_forward(x) if _needs_grad(x, self.weight, self.bias) else None
        return attach_ints(straight_through(value, reference), q), s_out
