"""freeze: a calibrated quant-mode I-BERT simulation -> the frozen integer engine.

The constants are not re-derived by a second copy of the simulation's scale arithmetic. One
forward of the simulation on a two-token batch records, for every quant module, the scales it
actually used (in eval mode they depend only on the calibrated buffers, not on the data) and the
integer width of its inputs; the integer constants are then computed by the same functions the
simulation's forward calls (``intops.requant_multiplier``, ``intops.gelu_constants``,
``intops.softmax_constants``, ``intops.layernorm_constants``). So the engine multiplies by exactly
the simulation's integers, and tests check the outputs bit for bit.

Every integer bound is checked here, once, and a configuration that could overflow raises
``OverflowRiskError`` instead of wrapping at run time (see ``_check_*``).
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
from torch import nn

from ..errors import OverflowRiskError
from ..models.ibert.modeling_ibert import IBertModel, IBertPreTrainedModel
from ..models.ibert.quant_modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantLinear,
    int_bits_of,
    named_overflow,
)
from ..quantization import intops
from .model import IntEmbeddings, IntegerIBertModel, IntLayer
from .modules import (
    GELUConstants,
    IntLinear,
    LayerNormConstants,
    Requant,
    ResidualRequant,
    SoftmaxConstants,
)

#: Activations feeding a GEMM are int8 in [-128, 127]; softmax probabilities are uint8 in [0, 255].
ACT_BOUND, PROB_BOUND = 128, 255


class _ScaleRecorder:
    """Forward hooks that record each quant module's input scales, input integer widths and output scale."""

    KINDS = (QuantAct, QuantLinear, IntSoftmax, IntGELU, IntLayerNorm)

    def __init__(self, model: nn.Module):
        self.model = model
        self.records: dict[nn.Module, dict] = {}
        self.handles = []

    def __enter__(self):
        for module in self.model.modules():
            if isinstance(module, self.KINDS):
                self.handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _hook(self, module, args, kwargs, output):
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        values = list(bound.arguments.values())
        x, s_x = values[0], (values[1] if len(values) > 1 else None)
        rec = {"out_scale": output[1]}
        if s_x is not None:
            rec["s_x"], rec["bits_x"] = intops.as_scale(s_x, x), int_bits_of(x)
        identity = bound.arguments.get("identity")
        if identity is not None:
            s_id = bound.arguments["identity_scaling_factor"]
            rec["s_id"], rec["bits_id"] = intops.as_scale(s_id, identity), int_bits_of(identity)
        self.records[module] = rec

    def __getitem__(self, module) -> dict:
        if module not in self.records:
            raise RuntimeError(f"{type(module).__name__} did not run in the tracing forward")
        return self.records[module]


def _check_freezable(model: nn.Module) -> IBertModel:
    if not isinstance(model, IBertPreTrainedModel):
        raise TypeError(f"freeze takes an intbert I-BERT model (IBertModel or a head), got {type(model).__name__}")
    config = model.config
    if not config.quant_mode:
        raise ValueError("freeze needs a quant_mode=True model: build it with IBertConfig(quant_mode=True) "
                         "(or bert_to_ibert(..., quant_mode=True)) and calibrate it with intbert.calibrate")
    if config.force_dequant != "none":
        raise ValueError(f"force_dequant={config.force_dequant!r} runs some non-linear functions in float; the "
                         "integer engine needs force_dequant='none'")
    base = model.base_model
    if not isinstance(base, IBertModel):
        raise TypeError(f"the model's base is {type(base).__name__}, expected IBertModel")
    return base


# ----------------------------------------------------------------------------------------------
# Bounds (each raises OverflowRiskError, naming what to change)
# ----------------------------------------------------------------------------------------------


def _check_ratio(s_in: torch.Tensor, s_out: torch.Tensor, where: str) -> None:
    intops.check_dyadic_range(s_in.double() / s_out.double(), where)


def _check_gemm(K: int, a_bound: int, b_bound: int, bias_max: int, where: str) -> None:
    """|sum_k a b| + |bias| <= K * a_bound * b_bound + max|bias| must stay below 2^31 (int32 accumulator)."""
    worst = K * a_bound * b_bound + bias_max
    if worst > intops.INT32_MAX:
        raise OverflowRiskError(f"{where}: K={K} x {a_bound} x {b_bound} + |bias| {bias_max} = {worst} can overflow "
                                "the int32 accumulator; use fewer weight bits or a shorter reduction")


# ----------------------------------------------------------------------------------------------
# Module-by-module conversion
# ----------------------------------------------------------------------------------------------


def _requant(act: QuantAct, rec: dict, part: str, where: str) -> Requant:
    s_in, bits_in, s_out = rec[f"s_{part}"], rec[f"bits_{part}"], rec["out_scale"]
    _check_ratio(s_in, s_out, where)
    if bits_in > intops.GELU_OUTPUT_BITS:
        raise OverflowRiskError(f"{where}: input integers of {bits_in} bits exceed what requantization handles (47)")
    m, e = intops.requant_multiplier(s_in, s_out)
    return Requant(m, e, s_out, act.activation_bit, bits_in)


def _act(act: QuantAct, rec: _ScaleRecorder, where: str) -> Requant:
    return _requant(act, rec[act], "x", where)


def _residual(act: QuantAct, rec: _ScaleRecorder, where: str) -> ResidualRequant:
    r = rec[act]
    return ResidualRequant(_requant(act, r, "x", where + " (input)"), _requant(act, r, "id", where + " (residual)"))


def _linear(lin: QuantLinear, rec: _ScaleRecorder, where: str) -> IntLinear:
    weight, _ = lin.quantized_weight()
    # The bias integers at the input scale the tracing forward recorded, computed afresh (not read back from the
    # ``bias_integer`` the forward left) and bound-checked by QuantLinear itself. The tracing forward checked them too
    # (base.eval() cleared the weight cache), so this is the same answer, asked of its one definition.
    bias = lin.integer_bias(rec[lin]["s_x"])
    if bias is None:
        bias = torch.zeros(lin.out_features, dtype=torch.int32)
    _check_gemm(lin.in_features, ACT_BOUND, 2 ** (lin.weight_bit - 1), int(bias.abs().max()), where)
    return IntLinear(weight.clone(), bias.clone(), lin.weight_bit)


def _softmax(sm: IntSoftmax, rec: _ScaleRecorder, where: str) -> SoftmaxConstants:
    scale = rec[sm]["s_x"]
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise OverflowRiskError(f"{where}: softmax input scale {scale.tolist()} is not a positive number; recalibrate")
    return SoftmaxConstants(sm.output_bit, **intops.softmax_constants(scale))


def _gelu(gelu: IntGELU, rec: _ScaleRecorder, where: str) -> GELUConstants:
    scale = rec[gelu]["s_x"]
    if bool((scale < intops.GELU_MIN_INPUT_SCALE).any()):
        raise OverflowRiskError(f"{where}: i-GELU input scale {scale.min().item():.3g} < "
                                f"{intops.GELU_MIN_INPUT_SCALE:.3g} could overflow int64; recalibrate wider ranges")
    b_int, c_int, one_int, _ = intops.gelu_constants(scale)
    return GELUConstants(b_int, c_int, one_int)


def _check_gelu_output(lin: IntLinear, g: GELUConstants, where: str) -> None:
    """Worst case of |i-GELU| per channel below 2^GELU_OUTPUT_BITS, the input width its requantization takes.

    |q| <= 128 * sum_k |w[c, k]| + |bias[c]| (any int8 input), |erf| <= (b^2 + |c|) / 2^14 + 1 and
    |out| = |q| |erf + one| <= |q| (|erf| + |one|). The scale floor GELU_MIN_INPUT_SCALE alone does not
    bound it: at S = 2^-20 an input of 1.0 already gives 2^49.5, where the split requantization's
    (q >> 16) * m would overflow int64. Computed in float64: a bound, compared with a power of two.
    """
    q_max = lin.weight.double().abs().sum(dim=1) * ACT_BOUND + lin.bias.double().abs()
    erf = (g.b.double() ** 2 + g.c.double().abs()) / 2**intops.GELU_SHIFT + 1
    worst = q_max * (erf + g.one.double().abs())
    limit = 2.0**intops.GELU_OUTPUT_BITS
    if bool((worst >= limit).any()):
        c = int(worst.argmax())
        raise OverflowRiskError(f"{where}: i-GELU output of channel {c} can reach 2^{math.log2(worst[c]):.1f} >= "
                                f"2^{intops.GELU_OUTPUT_BITS}; its input scale is too fine for its range, recalibrate "
                                "wider ranges (or use fewer weight bits)")


def _layernorm(ln: IntLayerNorm, rec: _ScaleRecorder, where: str) -> LayerNormConstants:
    rec[ln]
    C = ln.weight.shape[0]
    # sum((y >> shift)^2) < C * 2^46 (|y| < 2^23) must stay below 2^62 for isqrt: C < 2^16.
    if C >= 2**16:
        raise OverflowRiskError(f"{where}: LayerNorm over {C} channels can overflow the integer variance (< 65536)")
    sign, bias_int, _ = intops.layernorm_constants(ln.weight.detach(), ln.bias.detach(), C)
    return LayerNormConstants(ln.shift.detach().long(), sign, bias_int)


def _embeddings(emb, rec: _ScaleRecorder) -> IntEmbeddings:
    tables = [m.quantized_weight()[0].clone() for m in
              (emb.word_embeddings, emb.token_type_embeddings, emb.position_embeddings)]
    return IntEmbeddings(
        *tables,
        add_token_type=_residual(emb.embeddings_act1, rec, "embeddings_act1"),
        add_position=_residual(emb.embeddings_act2, rec, "embeddings_act2"),
        ln=_layernorm(emb.LayerNorm, rec, "embeddings.LayerNorm"),
        out=_act(emb.output_activation, rec, "embeddings.output_activation"),
    )


def _layer(layer, rec: _ScaleRecorder, i: int, config) -> IntLayer:
    at = f"layer {i}"
    sa, so = layer.attention.self, layer.attention.output
    d = config.hidden_size // config.num_attention_heads
    _check_gemm(d, ACT_BOUND, ACT_BOUND, 0, f"{at} attention scores")
    _check_gemm(config.max_position_embeddings, PROB_BOUND, ACT_BOUND, 0, f"{at} attention context")
    intermediate = _linear(layer.intermediate.dense, rec, f"{at} intermediate.dense")
    gelu = _gelu(layer.intermediate.intermediate_act_fn, rec, f"{at} intermediate GELU")
    _check_gelu_output(intermediate, gelu, f"{at} intermediate GELU")
    return IntLayer(
        config.num_attention_heads,
        query=_linear(sa.query, rec, f"{at} query"),
        key=_linear(sa.key, rec, f"{at} key"),
        value=_linear(sa.value, rec, f"{at} value"),
        query_act=_act(sa.query_activation, rec, f"{at} query_activation"),
        key_act=_act(sa.key_activation, rec, f"{at} key_activation"),
        value_act=_act(sa.value_activation, rec, f"{at} value_activation"),
        softmax=_softmax(sa.softmax, rec, f"{at} softmax"),
        context_act=_act(sa.output_activation, rec, f"{at} attention output_activation"),
        attention_dense=_linear(so.dense, rec, f"{at} attention.output.dense"),
        attention_add=_residual(so.ln_input_act, rec, f"{at} attention.output.ln_input_act"),
        attention_ln=_layernorm(so.LayerNorm, rec, f"{at} attention.output.LayerNorm"),
        attention_out=_act(so.output_activation, rec, f"{at} attention.output.output_activation"),
        pre_intermediate=_act(layer.pre_intermediate_act, rec, f"{at} pre_intermediate_act"),
        intermediate=intermediate,
        gelu=gelu,
        gelu_act=_act(layer.intermediate.output_activation, rec, f"{at} intermediate.output_activation"),
        pre_output=_act(layer.pre_output_act, rec, f"{at} pre_output_act"),
        output_dense=_linear(layer.output.dense, rec, f"{at} output.dense"),
        output_add=_residual(layer.output.ln_input_act, rec, f"{at} output.ln_input_act"),
        output_ln=_layernorm(layer.output.LayerNorm, rec, f"{at} output.LayerNorm"),
        output_out=_act(layer.output.output_activation, rec, f"{at} output.output_activation"),
    )


def _report_true_hidden_states(base: IBertModel, embeddings: IntEmbeddings, layers: list[IntLayer]) -> None:
    """A smoothed model (intbert.smooth) carries the hidden states entering layer i divided by that layer's
    ``attention.output.smooth_scale``; the boundary's dequantization scale becomes S * s_c, computed as the
    simulation's encoder computes it, so ``output_hidden_states`` gives the same true values bit for bit."""
    boundaries = [embeddings.out] + [layer.output_out for layer in layers[:-1]]
    for requant, layer in zip(boundaries, base.encoder.layer):
        factor = layer.attention.output.smooth_scale
        if factor is not None:
            requant.register_buffer("scale", (requant.scale * factor.to(requant.scale)).contiguous())


def integer_encoder(base: IBertModel, backend: str | None = None) -> IntegerIBertModel:
    """The integer twin of a calibrated quant-mode IBertModel (the pooler is copied, float)."""
    config = base.config
    was_training = base.training
    device = base.embeddings.word_embeddings.weight.device
    # Two tokens: enough to run every module; any ids work since eval-mode scales ignore the data.
    ids = torch.tensor([[config.bos_token_id or 0, config.eos_token_id if isinstance(config.eos_token_id, int)
                         else 0]], device=device).clamp(0, config.vocab_size - 1)
    base.eval()
    try:
        with torch.no_grad(), _ScaleRecorder(base) as rec:
            try:
                base(input_ids=ids)
                embeddings = _embeddings(base.embeddings, rec)
                layers = [_layer(layer, rec, i, config) for i, layer in enumerate(base.encoder.layer)]
            except OverflowRiskError as err:  # raised by a module (a bias that does not fit): name the layer
                raise named_overflow(base, err) from None
    finally:
        base.train(was_training)
    _report_true_hidden_states(base, embeddings, layers)
    pooler = copy.deepcopy(base.pooler) if base.pooler is not None else None
    integer = IntegerIBertModel(copy.deepcopy(config), embeddings, layers, pooler, backend)
    # The loader's bounds, on what was built: a frozen model always loads back (one definition of each bound).
    from .frozen import validate_encoder

    validate_encoder(integer, integer.config, where="freeze", error=OverflowRiskError)
    return integer.to(device)


def freeze(model: IBertPreTrainedModel, backend: str | None = None):
    """A calibrated quant-mode I-BERT (IBertModel or any head) -> :class:`~intbert.engine.FrozenIBert`.

    The encoder becomes integer-only (int8 weights per output channel, int32 biases, dyadic
    multipliers, integer i-GELU / i-exp / LayerNorm constants); the head's float layers are copied
    and run on the dequantized last hidden states, exactly as in the simulation, so the outputs
    are bit-identical to ``model``'s. ``backend``: "reference", "cpu", "cuda" or None (by device).
    Raises ``UncalibratedError`` for an uncalibrated model and ``OverflowRiskError`` for a
    configuration whose integers could overflow.
    """
    from .frozen import FrozenIBert

    base = _check_freezable(model)
    integer = integer_encoder(base, backend)
    if model is base:
        return FrozenIBert(integer)
    prefix = model.base_model_prefix
    setattr(model, prefix, None)  # copy the head without duplicating the float encoder
    try:
        head = copy.deepcopy(model)
    finally:
        setattr(model, prefix, base)
    setattr(head, prefix, integer)
    head.eval()
    return FrozenIBert(head)
