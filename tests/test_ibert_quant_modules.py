"""I-BERT simulated quant modules (``intbert.models.ibert.quant_modules``).

The behaviours of transformers' I-BERT integration tests (test_quant_embedding, test_quant_act,
test_quant_linear, test_int_gelu, test_int_softmax, test_int_layernorm and the three force_dequant
tests), made strict where intbert is exact: integers are read with ``ints_of`` and compared with
``torch.equal`` against Python-int oracles, and each float tolerance is a named constant with its
origin. Where transformers' own modules import, the dequantized outputs are compared with theirs.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intbert.errors import OverflowRiskError, UncalibratedError
from intbert.models.ibert import quant_modules as Q
from intbert.models.ibert.quant_modules import ints_of
from intbert.quantization import intops as I

from _sizes import AWKWARD_SIZES, gen, randn

try:  # allowed in tests only: the transformers port, for agreement checks
    from transformers.models.ibert import quant_modules as hf
except Exception:  # pragma: no cover - transformers is a dependency, but keep the rest runnable
    hf = None

needs_hf = pytest.mark.skipif(hf is None, reason="transformers' I-BERT quant modules do not import")

FORCE_DEQUANT = ("none", "gelu", "softmax", "layernorm", "nonlinear")

#: i-GELU vs exact GELU at S = 1e-3 on [-10, 10]: paper Table 1's L-inf (0.018, printed with two
#: digits, so up to 0.0185) plus two integer floors of one erf LSB |S_erf| = 0.2888 (S/1.4142)^2 2^14
#: each, weighted by |x|/2 and largest where erf is still curved (|x| <= 1.769 * 1.4142 = 2.5).
IGELU_ATOL = 0.0185 + 2.5 * 0.2888 * (1e-3 / 1.4142) ** 2 * 2**14
#: i-softmax vs float softmax: 2^-8 (floor of the 8-bit output) + twice the i-exp relative error
#: (paper section 3.3: max gap 1.9e-3 of L(p) vs exp on [-ln2, 0], where exp >= 0.5), plus the
#: grid error of x0 = floor(-ln2 / S) at the transformers test's coarse S = 0.1 (|x0 S| = 0.7 vs ln2:
#: 1% per halving, at most 2^-z * z * 0.01 <= 0.0037 in probability).
SOFTMAX_ATOL = 2.0**-8 + 2 * (1.9e-3 / 0.5) + 0.0037
#: transformers' fp32 simulation vs intbert's integers: transformers keeps x / S unrounded and
#: clamps weights to 126, so the two differ by up to one LSB of the weight (S_w |x|_1 per output);
#: for the non-linear ops both use the same constants, and the difference is a few output LSBs.
HF_LINEAR_ATOL_LSB = 1.0


def _int(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _requant_oracle(q: int, ratio_m: int, e: int, bits: int = 32) -> int:
    y = (q * ratio_m + (1 << (e - 1))) >> e if e > 0 else q * ratio_m
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, y))


def _assert_simulated(
    value: torch.Tensor, scale: torch.Tensor, want_ints: torch.Tensor | None = None, exact_value: bool = True
) -> torch.Tensor:
    """The attached integers are as expected and (without autograd) value == ints * scale exactly.

    With a straight-through reference the value is ``ref + (v - ref)``, which may round by an ulp, so
    only the integers are checked there (``exact_value=False``).
    """
    q = ints_of(value, scale)
    assert not q.dtype.is_floating_point  # int8 / int32 / int64 by the width the producer needs
    q = q.long()
    if exact_value:
        assert torch.equal(q.to(value.dtype) * scale.to(value.dtype), value.detach())
    else:
        assert torch.allclose(q.double() * scale.double(), value.detach().double(), rtol=2**-22, atol=0)
    if want_ints is not None:
        assert torch.equal(q, want_ints)
    return q


# =============================================================================================
# QuantEmbedding (transformers test 1)
# =============================================================================================


def _embedding(quant_mode=True):
    emb = Q.QuantEmbedding(2, 4, quant_mode=quant_mode, weight_bit=8)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[-1.0, -2, -3, -4], [5, 6, 7, 8]]))
    return emb


def test_quant_embedding_scale_and_integers_largest_weight_is_127():
    emb = _embedding()
    x, sx = emb(torch.tensor(0))
    y, sy = emb(torch.tensor(1))
    want_scale = torch.tensor([8.0]) / 127
    assert torch.equal(sx, want_scale) and torch.equal(sy, want_scale)
    qx = _assert_simulated(x, sx, _int([round(v * 127 / 8) for v in (-1, -2, -3, -4)]))
    qy = _assert_simulated(y, sy, _int([round(v * 127 / 8) for v in (5, 6, 7, 8)]))
    assert qy.max().item() == 127  # not 126 (transformers' [-127, 126] clamp)
    assert torch.equal(y, qy.float() * want_scale)
    assert torch.allclose(x, torch.tensor([-1.0, -2, -3, -4]), atol=want_scale.item() / 2)
    assert torch.allclose(y, torch.tensor([5.0, 6, 7, 8]), atol=want_scale.item() / 2)
    assert torch.equal(emb.weight_integer, torch.cat([qx, qy]).reshape(2, 4).to(torch.int8))
    assert torch.equal(emb.weight_scaling_factor, want_scale)


def test_quant_embedding_without_quant_mode_is_plain_embedding():
    emb = _embedding(quant_mode=False)
    out, s = emb(torch.tensor([1, 0]))
    assert s is None and torch.equal(out, emb.weight[[1, 0]])


def test_quant_embedding_all_zero_table_has_floor_scale():
    emb = Q.QuantEmbedding(3, 5, quant_mode=True)
    out, s = emb(torch.tensor([0, 2]))
    assert torch.equal(s, torch.tensor([1e-8]) / 127)
    assert torch.equal(out, torch.zeros(2, 5))


def test_quant_embedding_gradient_is_straight_through():
    emb = _embedding()
    out, _ = emb(torch.tensor([1, 1, 0]))
    out.sum().backward()
    assert torch.equal(emb.weight.grad, torch.tensor([[1.0] * 4, [2.0] * 4]))


def test_quant_embedding_requantizes_after_in_place_weight_change():
    emb = _embedding().eval()  # eval: cached between changes
    emb(torch.tensor(0))
    first = emb.weight_integer
    emb(torch.tensor(1))
    assert emb.weight_integer is first  # unchanged weight: not re-quantized
    with torch.no_grad():
        emb.weight[1, 3] = 16.0
    y, s = emb(torch.tensor(1))
    assert torch.equal(s, torch.tensor([16.0]) / 127)
    _assert_simulated(y, s, _int([40, 48, 56, 127]))


@needs_hf
def test_quant_embedding_agrees_with_transformers_within_one_lsb():
    ours, theirs = _embedding(), hf.QuantEmbedding(2, 4, quant_mode=True, weight_bit=8)
    theirs.weight.data.copy_(ours.weight.data)
    ids = torch.tensor([[0, 1, 1, 0]])
    (a, sa), (b, sb) = ours(ids), theirs(ids)
    assert torch.allclose(sa, sb)
    # transformers clamps the largest weight to 126: one LSB at most.
    assert (a - b).abs().max() <= sa.item() * HF_LINEAR_ATOL_LSB + 1e-6


# =============================================================================================
# QuantAct (transformers test 2)
# =============================================================================================

X_ACT = torch.tensor([[-4.0, 1.0, 8.0, -2.0], [3.0, -1.0, 7.0, 0.0]])  # integers at S_in = 1


def _act_ints_oracle(x: torch.Tensor, s_in: float, s_out: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """round(x / S_in) requantized by dyadic(S_in / S_out) (half up) and clamped to ``bits``."""
    m, e = I.dyadic(torch.tensor([s_in], dtype=torch.float64) / s_out.double())
    out = [_requant_oracle(round(v / s_in), m.item(), e.item()) for v in x.flatten().tolist()]
    lo, hi = I.quant_bounds(bits)
    return _int([max(lo, min(hi, v)) for v in out]).reshape(x.shape)


@pytest.mark.parametrize("s_in", [torch.tensor(1.0), torch.tensor([1.0])], ids=["0-dim", "shape1"])
def test_quant_act_first_batch_sets_range_exactly_then_ema_095(s_in):
    act = Q.QuantAct(8, 0.95, quant_mode=True)
    act.train()
    y, s = act(X_ACT, s_in)
    assert act.x_min.tolist() == [-4.0] and act.x_max.tolist() == [8.0]  # exact: no +-1e-5 offset
    assert torch.equal(s, torch.tensor([8.0]) / 127)
    assert torch.equal(act.act_scaling_factor, s)
    q = _assert_simulated(y, s, _act_ints_oracle(X_ACT, 1.0, s))
    assert q.max().item() == 127 and q.min().item() == -64  # -4 * 127 / 8 = -63.5: half up
    assert (y - X_ACT).abs().max() <= s.item() / 2 + 1e-6

    x2 = X_ACT * 2
    y2, s2 = act(x2, s_in)
    want_min = 0.95 * torch.tensor([-4.0]) + (1 - 0.95) * torch.tensor([-8.0])
    want_max = 0.95 * torch.tensor([8.0]) + (1 - 0.95) * torch.tensor([16.0])
    assert torch.equal(act.x_min, want_min) and torch.equal(act.x_max, want_max)
    assert torch.allclose(act.x_min, torch.tensor([-4.2])) and torch.allclose(act.x_max, torch.tensor([8.4]))
    assert torch.equal(s2, want_max / 127)
    q2 = _assert_simulated(y2, s2, _act_ints_oracle(x2, 1.0, s2))
    assert q2.max().item() == 127  # 16 saturates at +127, exactly
    assert (y2 - x2.clamp(-8.4, 8.4)).abs().max() <= s2.item() / 2 + 1e-6


def test_quant_act_zero_dim_and_shape_1_scales_agree():
    outs = []
    for s_in in (torch.tensor(0.25), torch.tensor([0.25]), 0.25):
        act = Q.QuantAct(8, quant_mode=True)
        outs.append(act(X_ACT, s_in)[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_quant_act_running_min_max_with_momentum_minus_1():
    act = Q.QuantAct(8, act_range_momentum=-1, quant_mode=True)
    act(X_ACT, torch.tensor(1.0))
    act(X_ACT * 0.5, torch.tensor(1.0))
    act(X_ACT * torch.tensor([[1.0], [3.0]]), torch.tensor(1.0))
    assert act.x_min.tolist() == [-4.0] and act.x_max.tolist() == [21.0]


def test_quant_act_eval_freezes_ranges_during_forward():
    act = Q.QuantAct(8, quant_mode=True)
    act(X_ACT, torch.tensor(1.0))
    act.eval()
    before = {k: v.clone() for k, v in act.state_dict().items()}
    y, s = act(X_ACT * 10, torch.tensor(1.0))  # far outside the range: must not move it
    for k, v in act.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(s, torch.tensor([8.0]) / 127)
    assert ints_of(y, s).max().item() == 127 and ints_of(y, s).min().item() == -128  # saturated


def test_quant_act_uncalibrated_eval_raises():
    act = Q.QuantAct(8, quant_mode=True).eval()
    with pytest.raises(UncalibratedError):
        act(X_ACT, torch.tensor(1.0))
    # explicit ranges are a calibration
    y, s = act(X_ACT, torch.tensor(1.0), specified_min=torch.tensor([-8.0]), specified_max=torch.tensor([8.0]))
    assert torch.equal(s, torch.tensor([8.0]) / 127)


def test_quant_act_not_quant_mode_passes_through_and_still_records_range():
    act = Q.QuantAct(8, quant_mode=False)
    y, s = act(X_ACT, identity=X_ACT * 0.5)
    assert s is None and torch.equal(y, X_ACT * 1.5)
    assert act.x_min.tolist() == [-6.0] and act.x_max.tolist() == [12.0]


IDENTITY = torch.tensor([[6.0, -7, 1, -2], [3, -4, -8, 5]])


def test_quant_act_identity_requantizes_both_addends_and_clamps_once():
    act = Q.QuantAct(8, quant_mode=True)
    x = torch.tensor([[2.0, -5, 3, 1], [-3, 4, 1, 7]])  # integers at S = 1.0
    z, s = act(x, torch.tensor(1.0), identity=IDENTITY, identity_scaling_factor=torch.tensor(0.5))
    # range of x + identity: [[8, -12, 4, -1], [0, 0, -7, 12]]
    assert act.x_min.tolist() == [-12.0] and act.x_max.tolist() == [12.0]
    m1, e1 = I.dyadic(torch.tensor([1.0], dtype=torch.float64) / s.double())
    m2, e2 = I.dyadic(torch.tensor([0.5], dtype=torch.float64) / s.double())
    want = [
        max(-128, min(127, _requant_oracle(round(a), m1.item(), e1.item()) + _requant_oracle(round(b / 0.5), m2.item(), e2.item())))
        for a, b in zip(x.flatten().tolist(), IDENTITY.flatten().tolist())
    ]
    _assert_simulated(z, s, _int(want).reshape(2, 4))
    assert (z - (x + IDENTITY)).abs().max() <= s.item()  # two half-LSB roundings


def test_quant_act_keeps_identity_without_input_scale_inputs_embeds_path():
    # transformers drops the identity when pre_act_scaling_factor is None (inputs_embeds in quant mode).
    act = Q.QuantAct(16, quant_mode=True)
    x = torch.tensor([[0.31, -1.7, 2.2], [0.0, 0.9, -0.45]])
    ident = torch.tensor([[1.0, 2.0, -3.0], [0.5, -0.5, 4.0]])
    z, s = act(x, None, identity=ident, identity_scaling_factor=torch.tensor([0.5]))
    m, e = I.dyadic(torch.tensor([0.5], dtype=torch.float64) / s.double())
    want = [
        round(a / s.item()) + _requant_oracle(round(b / 0.5), m.item(), e.item())
        for a, b in zip(x.double().flatten().tolist(), ident.flatten().tolist())
    ]
    # x itself is rounded from float (half to even, in float64)
    want_x = torch.round(x.double() / s.double()).long().flatten().tolist()
    want = [wx + _requant_oracle(round(b / 0.5), m.item(), e.item()) for wx, b in zip(want_x, ident.flatten().tolist())]
    _assert_simulated(z, s, _int(want).reshape(2, 3))
    assert (z - (x + ident)).abs().max() <= s.item()


def test_quant_act_gradient_is_identity_for_input_and_residual():
    act = Q.QuantAct(8, quant_mode=True)
    x = X_ACT.clone().requires_grad_()
    r = IDENTITY.clone().requires_grad_()
    z, s = act(x, torch.tensor(1.0), identity=r, identity_scaling_factor=torch.tensor(1.0))
    g = randn(5, (2, 4))
    z.backward(g)
    assert torch.equal(x.grad, g) and torch.equal(r.grad, g)
    # the forward value is still the simulated integers
    _assert_simulated(z, s, exact_value=False)


def test_quant_act_per_channel_requantizes_per_channel_input_scales():
    C = 7
    act = Q.QuantAct(8, per_channel=True, channel_len=C, quant_mode=True)
    s_in = torch.rand(C, generator=gen(3)) * 0.1 + 0.01
    q_in = torch.randint(-500, 500, (5, C), generator=gen(4))
    x = q_in.float() * s_in
    y, s = act(x, s_in)
    assert s.shape == (C,)
    ratio = s_in.double() / s.double()
    m, e = I.dyadic(ratio)
    want = _int([[max(-128, min(127, _requant_oracle(q_in[i, j].item(), m[j].item(), e[j].item()))) for j in range(C)] for i in range(5)])
    _assert_simulated(y, s, want)


@needs_hf
def test_quant_act_agrees_with_transformers_on_identity_add():
    ours, theirs = Q.QuantAct(8, quant_mode=True), hf.QuantAct(8, quant_mode=True)
    x = torch.tensor([[2.0, -5, 3, 1], [-3, 4, 1, 7]])
    a, sa = ours(x, torch.tensor([1.0]), identity=IDENTITY, identity_scaling_factor=torch.tensor([0.5]))
    b, sb = theirs(x, torch.tensor([1.0]), identity=IDENTITY, identity_scaling_factor=torch.tensor([0.5]))
    # transformers' first range carries a +-1e-5 offset, so its scale differs by ~1e-5 / 127.
    assert torch.allclose(sa, sb, rtol=1e-5)
    # half-up (ours) vs half-even (theirs) rounding of each addend: at most one LSB apart.
    assert (a - b).abs().max() <= sa.item() * 1.0001


# =============================================================================================
# QuantLinear (transformers test 3)
# =============================================================================================

W_LIN = torch.tensor([[-1.0, 2, 3, -4], [5, -6, -7, 8]]).T  # (4, 2)
X_LIN = torch.tensor([[2.0, -5], [-3, 4]])


def _linear(per_channel: bool, bias: bool = True, out_features: int = 4, in_features: int = 2):
    lin = Q.QuantLinear(in_features, out_features, bias=bias, per_channel=per_channel, quant_mode=True)
    with torch.no_grad():
        lin.weight.copy_(W_LIN if out_features == 4 else torch.randn(out_features, in_features, generator=gen(9)))
        if bias:
            lin.bias.copy_(torch.tensor([0.3, -1.25, 0.0, 2.5])[:out_features] if out_features == 4 else torch.randn(out_features, generator=gen(10)))
    return lin


def _linear_oracle(q_x: list[list[int]], w_int: list[list[int]], b_int: list[int] | None) -> torch.Tensor:
    return _int([[sum(a * b for a, b in zip(row, w)) + (b_int[o] if b_int else 0) for o, w in enumerate(w_int)] for row in q_x])


@pytest.mark.parametrize("per_channel", [True, False])
def test_quant_linear_weight_scale_integers_and_exact_accumulation(per_channel):
    lin = _linear(per_channel)
    s_in = torch.tensor([1.0])
    y, s_b = lin(X_LIN, s_in)
    if per_channel:
        want_sw = torch.tensor([5.0, 6, 7, 8]) / 127
    else:
        want_sw = torch.full((4,), 8.0) / 127
    assert torch.equal(lin.fc_scaling_factor, want_sw)
    assert torch.equal(s_b, want_sw * s_in.reshape(()))
    w_int = lin.weight_integer
    assert w_int.dtype == torch.int8
    assert torch.equal(w_int.long(), I.quantize_by_scale(W_LIN, want_sw[:, None], 8))
    if per_channel:  # every row's largest |w| quantizes to 127 (not 126)
        assert w_int.abs().amax(1).tolist() == [127, 127, 127, 127]
    assert w_int.max().item() == 127
    b_int = torch.round(lin.bias.double() / s_b.double()).long()
    assert torch.equal(lin.bias_integer.long(), b_int)
    want = _linear_oracle(X_LIN.long().tolist(), w_int.long().tolist(), b_int.tolist())
    _assert_simulated(y, s_b, want)
    dq = F.linear(X_LIN, W_LIN, lin.bias.detach())
    # error: one weight half-LSB per input term, one bias half-LSB
    assert (y - dq).abs().max() <= (want_sw * (X_LIN.abs().sum(1, keepdim=True) / 2 + 0.5)).max()


def test_quant_linear_integer_bias_is_the_forwards_bias_at_any_input_scale_and_writes_nothing():
    """freeze asks integer_bias(S_x) for the bias instead of reading what the last forward left in bias_integer."""
    lin = _linear(True).eval()
    lin(X_LIN, torch.tensor([1.0]))
    stored = lin.bias_integer
    assert torch.equal(lin.integer_bias(torch.tensor([1.0])), stored)
    s_b = lin.fc_scaling_factor.double() * 0.25
    other = lin.integer_bias(0.25)  # a Python float works as a scale too
    assert other.dtype == torch.int32
    assert other.tolist() == [round(Fraction(b) / Fraction(s)) for b, s in zip(lin.bias.tolist(), s_b.tolist())]
    assert not torch.equal(other, stored)
    assert lin.bias_integer is stored and torch.equal(stored, lin.integer_bias(torch.tensor(1.0)))  # not overwritten
    assert _linear(True, bias=False).integer_bias(torch.tensor([1.0])) is None


def test_quant_linear_integer_bias_checks_the_bound_even_after_a_data_edit_the_forward_skips():
    lin = Q.QuantLinear(33, 4, per_channel=True, quant_mode=True).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 33, generator=gen(7)))
    s_in = torch.tensor([0.05])
    lin(torch.zeros(2, 33), s_in)  # checked once for these weights (eval)
    lin.bias.data[2] = 1e9  # .data bypasses the version counter: the eval forward does not check again
    lin(torch.zeros(2, 33), s_in)
    with pytest.raises(OverflowRiskError, match="output channel 2") as info:
        lin.integer_bias(s_in)
    assert info.value.module is lin


def test_quant_linear_without_bias_works():
    lin = _linear(True, bias=False)
    y, s_b = lin(X_LIN, torch.tensor(1.0))  # 0-dim input scale too
    assert "bias_integer" not in lin.state_dict() and lin.bias is None
    want = _linear_oracle(X_LIN.long().tolist(), lin.weight_integer.long().tolist(), None)
    _assert_simulated(y, s_b, want)


def test_quant_linear_represents_the_bias_of_an_all_zero_row_instead_of_clamping_it():
    """A pruned (all-zero) row has a ~1e-10 weight scale, so bias 1 needed ~10^10 steps and was clamped to 0.0047."""
    lin = Q.QuantLinear(33, 4, per_channel=True, quant_mode=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 33, generator=gen(5)))
        lin.weight[2] = 0.0
        lin.bias.copy_(torch.tensor([0.1, -0.2, 1.0, 0.3]))
    s_in = torch.tensor([0.05])
    q_x = torch.randint(-128, 128, (3, 33), generator=gen(6))
    y, s_b = lin(q_x.float() * s_in, s_in)
    # The zero row takes the largest row scale, so its bias is as exact as its neighbours' (half a step).
    assert lin.fc_scaling_factor[2] == lin.fc_scaling_factor.max() and lin.weight_integer[2].eq(0).all()
    assert (y[:, 2] - 1.0).abs().max() <= s_b[2] / 2
    b_int = lin.bias_integer.long().tolist()
    _assert_simulated(y, s_b, _linear_oracle(q_x.tolist(), lin.weight_integer.long().tolist(), b_int))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_quant_linear_refuses_a_bias_that_does_not_fit_naming_the_channel(mode):
    lin = Q.QuantLinear(33, 4, per_channel=True, quant_mode=True).train(mode == "train")
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 33, generator=gen(7)))
        lin.weight[1] = 0.0
        lin.weight[1, 0] = 1e-7  # one non-zero integer (127) at a tiny scale: the row's scale is not free
        lin.bias.fill_(0.5)
    s_in = torch.tensor([0.05])
    with pytest.raises(OverflowRiskError, match=r"output channel 1: bias 0\.5"):
        lin(torch.zeros(2, 33), s_in)


def test_quant_linear_requires_per_tensor_input_scale():
    lin = _linear(True)
    with pytest.raises(ValueError):
        lin(X_LIN, None)
    with pytest.raises(ValueError):
        lin(X_LIN, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("K", AWKWARD_SIZES)
def test_quant_linear_exact_on_awkward_sizes_with_saturating_inputs(K):
    lin = Q.QuantLinear(K, 5, per_channel=True, quant_mode=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, K, generator=gen(K)))
        lin.bias.copy_(torch.randn(5, generator=gen(K + 1)))
    s_in = torch.tensor([0.05])
    q_x = torch.randint(-128, 128, (3, K), generator=gen(K + 2))
    q_x[0] = -128
    y, s_b = lin(q_x.float() * s_in, s_in)
    b_int = lin.bias_integer.long().tolist()
    _assert_simulated(y, s_b, _linear_oracle(q_x.tolist(), lin.weight_integer.long().tolist(), b_int))


@pytest.mark.parametrize("bias", [True, False])
def test_quant_linear_gradients_equal_float_linear(bias):
    lin = _linear(True, bias=bias, out_features=7, in_features=33)
    ref = nn.Linear(33, 7, bias=bias)
    with torch.no_grad():
        ref.weight.copy_(lin.weight)
        if bias:
            ref.bias.copy_(lin.bias)
    s_in = torch.tensor([0.02])
    x0 = torch.randint(-128, 128, (2, 3, 33), generator=gen(11)).float() * s_in
    x1, x2 = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    g = randn(12, (2, 3, 7))
    y1, s_b = lin(x1, s_in)
    y1.backward(g)
    ref(x2).backward(g)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-6, atol=1e-6)
    assert torch.allclose(lin.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)
    if bias:
        assert torch.allclose(lin.bias.grad, ref.bias.grad, rtol=1e-6, atol=1e-6)
    _assert_simulated(y1, s_b, exact_value=False)  # the forward value is still the integer one


def test_quant_linear_requantizes_only_after_weight_changes():
    lin = _linear(True).eval()  # eval: cached between changes (training with gradients re-quantizes every call)
    lin(X_LIN, torch.tensor([1.0]))
    w_int, s_w = lin.weight_integer, lin.fc_scaling_factor
    lin(X_LIN, torch.tensor([1.0]))
    assert lin.weight_integer is w_int and lin.fc_scaling_factor is s_w  # cached
    with torch.no_grad():
        lin.weight.mul_(2)
    y, s_b = lin(X_LIN, torch.tensor([1.0]))
    assert torch.equal(lin.fc_scaling_factor, 2 * s_w)
    with torch.no_grad():
        lin.weight[0, 0] = 100.0  # row 0 = [100, 10]: 10 * 127 / 100 = 12.7 -> 13
    y, s_b = lin(X_LIN, torch.tensor([1.0]))
    assert lin.weight_integer[0].tolist() == [127, 13]
    _assert_simulated(y, s_b, _linear_oracle(X_LIN.long().tolist(), lin.weight_integer.long().tolist(), lin.bias_integer.long().tolist()))


def test_quant_linear_requantizes_after_weight_data_is_written():
    lin = _linear(True)
    lin(X_LIN, torch.tensor([1.0]))  # train mode with gradients: re-quantized every call
    lin.weight.data.mul_(2)  # e.g. a converter or old-style init writing through .data
    lin(X_LIN, torch.tensor([1.0]))
    assert torch.equal(lin.fc_scaling_factor, torch.tensor([10.0, 12, 14, 16]) / 127)
    lin.eval()
    lin(X_LIN, torch.tensor([1.0]))
    lin.weight.data.mul_(0.5)  # .data bypasses the version counter: eval() clears the cache
    lin.eval()
    lin(X_LIN, torch.tensor([1.0]))
    assert torch.equal(lin.fc_scaling_factor, torch.tensor([5.0, 6, 7, 8]) / 127)


@needs_hf
@pytest.mark.parametrize("per_channel", [True, False])
def test_quant_linear_agrees_with_transformers_within_one_weight_lsb(per_channel):
    ours, theirs = _linear(per_channel), hf.QuantLinear(2, 4, per_channel=per_channel, quant_mode=True)
    theirs.weight.data.copy_(ours.weight.data)
    theirs.bias.data.copy_(ours.bias.data)
    s_in = torch.tensor([1.0])
    (a, sa), (b, sb) = ours(X_LIN, s_in), theirs(X_LIN, s_in)
    assert torch.allclose(sa, sb)
    # transformers clamps the largest weight to 126: |x| * one weight LSB per output.
    tol = HF_LINEAR_ATOL_LSB * (sa * X_LIN.abs().sum(1, keepdim=True)).max()
    assert (a - b).abs().max() <= tol


# =============================================================================================
# IntGELU (transformers tests 4, 5)
# =============================================================================================

X_GELU = torch.arange(-10000, 10001) * 0.001
S_GELU = torch.tensor(0.001)


def test_int_gelu_module_integers_scale_and_accuracy():
    gelu = Q.IntGELU(quant_mode=True)
    y, s_out = gelu(X_GELU, S_GELU)
    assert (s_out > 0).all()  # the sign is folded into the integers (transformers' is negative)
    b, c, one, s_want = I.gelu_constants(S_GELU.reshape(1))
    assert torch.equal(s_out.reshape(1), s_want)
    q_in = torch.round(X_GELU.double() / 0.001).long()
    _assert_simulated(y, s_out, I.int_gelu(q_in, b, c, one))
    assert (y - nn.GELU()(X_GELU)).abs().max() <= IGELU_ATOL


def test_int_gelu_gradient_is_float_gelu_gradient():
    x = (X_GELU[::997]).clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    Q.IntGELU()(x, S_GELU)[0].sum().backward()
    F.gelu(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_int_gelu_then_quant_act_chain_at_fine_gemm_scale():
    """GEMM output scale 1e-5 (S_x 0.03 x S_w 3e-4): i-GELU scale ~1e-12, integers ~2^42, then an 8-bit
    QuantAct: the requantization ratio ~3e-11 needs a shift above 63 (dyadic must keep its value)."""
    S = torch.tensor([1e-5])
    x = torch.linspace(-4, 4, 129)
    q = torch.round(x.double() / 1e-5).long()
    xin = Q.attach_ints(q.float() * S, q)
    g, s_g = Q.IntGELU()(xin, S)
    act = Q.QuantAct(8, quant_mode=True)
    y, s_y = act(g, s_g)
    assert (y - F.gelu(x)).abs().max() <= s_y.item() + IGELU_ATOL


def test_int_gelu_refuses_scale_below_overflow_bound():
    # S = 2^-24 with a GEMM-sized accumulator: |q * (erf + one)| ~ 2^69 wraps int64 silently.
    S = torch.tensor([2.0**-24])
    q = torch.tensor([2**31 - 1])
    with pytest.raises(OverflowRiskError):
        Q.IntGELU()(Q.attach_ints(q.float() * S, q), S)


@pytest.mark.parametrize("force_dequant", FORCE_DEQUANT)
def test_int_gelu_force_dequant(force_dequant):
    gelu = Q.IntGELU(quant_mode=True, force_dequant=force_dequant)
    y, s = gelu(X_GELU, S_GELU)
    ref = Q.IntGELU(quant_mode=False)(X_GELU, S_GELU)[0]
    if force_dequant in ("gelu", "nonlinear"):
        assert not gelu.quant_mode and s is None and torch.equal(y, ref)
    else:
        assert gelu.quant_mode and s is not None and not torch.allclose(y, ref, atol=1e-4)


def test_force_dequant_rejects_unknown_value():
    for cls in (Q.IntGELU, lambda **k: Q.IntSoftmax(8, **k), lambda **k: Q.IntLayerNorm(4, 1e-5, **k)):
        with pytest.raises(ValueError):
            cls(quant_mode=True, force_dequant="gelus")


@needs_hf
def test_int_gelu_agrees_with_transformers():
    a, sa = Q.IntGELU(quant_mode=True)(X_GELU, S_GELU)
    b, sb = hf.IntGELU(quant_mode=True)(X_GELU, S_GELU)
    assert torch.allclose(sa, sb.abs(), rtol=1e-6)  # transformers' output scale is negative
    # same constants; transformers keeps x / S unrounded and floors 1 / S_erf with floor-divide:
    # a few output LSBs (|x| * |S_erf| <= 10 * 2.4e-3).
    assert (a - b).abs().max() <= 10 * 0.2888 * (1e-3 / 1.4142) ** 2 * 2**14


# =============================================================================================
# IntSoftmax (transformers tests 6, 7)
# =============================================================================================

SOFTMAX_INPUTS = [
    torch.tensor([[i + j for j in range(10)] for i in range(-10, 10)]).float(),
    torch.tensor([[i + j for j in range(50)] for i in range(-10, 10)]).float(),
    torch.tensor([[i + 100 * j for j in range(2)] for i in range(-10, 10)]).float(),
]


def test_int_softmax_module_integers_range_and_accuracy():
    sm = Q.IntSoftmax(8, quant_mode=True)
    sm.train()
    S = torch.tensor(0.1)
    for x in SOFTMAX_INPUTS:
        p, s = sm(x, S)
        assert torch.equal(s, torch.tensor([2.0**-8]))
        q_in = torch.round(x.double() / 0.1).long()
        q = _assert_simulated(p, s, I.int_softmax(q_in, torch.ones_like(q_in, dtype=torch.bool), I.softmax_constants(S.reshape(1)), 8))
        assert q.min().item() >= 0 and q.max().item() <= 255  # on the integers, not the probabilities
        assert (p - torch.softmax(x, -1)).abs().max() <= SOFTMAX_ATOL


def test_int_softmax_boolean_and_additive_masks_give_exact_zeros():
    sm = Q.IntSoftmax(8, quant_mode=True)
    S = torch.tensor([0.01])
    x = randn(20, (2, 3, 5, 17)) * 2
    mask = torch.rand(2, 1, 1, 17, generator=gen(21)) > 0.4
    mask[..., 0] = True
    p_bool, s = sm(x, S, mask=mask)
    p_add, _ = sm(x + torch.where(mask, 0.0, torch.finfo(torch.float32).min), S)
    p_inf, _ = sm(x.masked_fill(~mask, float("-inf")), S)
    assert torch.equal(p_bool, p_add) and torch.equal(p_bool, p_inf)
    assert (p_bool.expand_as(x)[~mask.expand_as(x)] == 0).all()
    ref = torch.softmax(x.masked_fill(~mask, float("-inf")), -1)
    assert (p_bool - ref).abs().max() <= SOFTMAX_ATOL


def test_int_softmax_single_position_and_fully_masked_rows():
    sm = Q.IntSoftmax(8, quant_mode=True)
    x = torch.tensor([[0.3, 1.0, -2.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[False, True, False], [False, False, False]])
    p, s = sm(x, torch.tensor([0.01]), mask=mask)
    assert ints_of(p, s).tolist() == [[0, 255, 0], [0, 0, 0]]
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("force_dequant", FORCE_DEQUANT)
def test_int_softmax_force_dequant(force_dequant):
    x, S = SOFTMAX_INPUTS[0], torch.tensor(0.1)
    sm = Q.IntSoftmax(8, quant_mode=True, force_dequant=force_dequant)
    y, s = sm(x, S)
    ref = Q.IntSoftmax(8, quant_mode=False)(x, S)[0]
    if force_dequant in ("softmax", "nonlinear"):
        assert not sm.quant_mode and s is None and torch.equal(y, ref)
    else:
        assert sm.quant_mode and s is not None and not torch.allclose(y, ref, atol=1e-4)


@needs_hf
def test_int_softmax_agrees_with_transformers():
    ours, theirs = Q.IntSoftmax(8, quant_mode=True), hf.IntSoftmax(8, quant_mode=True)
    ours.train(), theirs.train()
    for x in SOFTMAX_INPUTS:
        a, _ = ours(x, torch.tensor(0.1))
        b, _ = theirs(x, torch.tensor(0.1))
        # both within SOFTMAX_ATOL of float softmax; transformers' 16-bit requantization of the
        # exponentials moves each probability by at most a couple of output LSBs.
        assert (a - b).abs().max() <= 2 * 2.0**-8


# =============================================================================================
# IntLayerNorm (transformers tests 8, 9)
# =============================================================================================

X_LN = torch.tensor([[[i * j * j + j for j in range(5, 15)]] for i in range(-10, 10)]) * 0.1
#: IntLayerNorm vs float LayerNorm on the transformers test input. The mean is rounded (half up) to
#: an integer; row i = 0 (x = j / 10, integers 5..14) has integer sigma 2.87 and mean 9.5, so y moves
#: by 0.5: 0.5 / 2.87 = 0.174 in normalized units, plus 0.024 from the larger variance
#: (0.125 / sigma^2 * max|y / sigma| = 1.57). The 2^31 // std floor adds < 2^-20. Transformers: 0.190.
LN_ATOL = 0.5 / 2.87 + 0.125 / 2.87**2 * 1.57 + 2.0**-20


def _int_layernorm(**kw):
    ln = Q.IntLayerNorm((1, 10), 1e-5, output_bit=8, **kw)
    with torch.no_grad():
        ln.weight.fill_(1.0)
        ln.bias.fill_(1.0)
    return ln


def test_int_layernorm_module_integers_and_accuracy():
    ln = _int_layernorm(quant_mode=True)
    S = torch.tensor(0.1)
    y, s_out = ln(X_LN, S)
    assert s_out.shape == (1, 10) and torch.equal(s_out, torch.full((1, 10), math.sqrt(10) / 2**30))
    q_in = torch.round(X_LN.double() / 0.1).long()
    assert ln.shift.item() == I.layernorm_shift(q_in).item()
    sign, bias_int, _ = I.layernorm_constants(ln.weight.detach(), ln.bias.detach(), 10)
    _assert_simulated(y, s_out, I.int_layernorm(q_in, ln.shift.long(), sign, bias_int))
    ref = nn.LayerNorm((1, 10), 1e-5)
    with torch.no_grad():
        ref.weight.fill_(1.0)
        ref.bias.fill_(1.0)
    assert (y - ref(X_LN)).abs().max() <= LN_ATOL


def test_int_layernorm_shift_grows_in_train_and_is_frozen_in_eval():
    ln = Q.IntLayerNorm(768, 1e-5, quant_mode=True)
    with torch.no_grad():
        ln.weight.fill_(1.0)
    S = torch.tensor([1e-3])
    small = torch.randint(-100, 100, (2, 768), generator=gen(30)).float() * S
    big = torch.randint(-(2**21), 2**21, (2, 768), generator=gen(31)).float() * S
    ln(small, S)
    assert ln.shift.item() == 0
    ln(big, S)
    grown = ln.shift.item()
    q_big = torch.round(big.double() / 1e-3).long()
    assert grown == I.layernorm_shift(q_big).item() > 0
    ln(small, S)
    assert ln.shift.item() == grown  # never shrinks
    ln.eval()
    ln(big * 4, S)
    assert ln.shift.item() == grown  # frozen in eval


def test_int_layernorm_constant_row_gives_beta_not_nan():
    ln = Q.IntLayerNorm(17, 1e-5, quant_mode=True)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-2, 2, 17))
        ln.bias.copy_(torch.linspace(-1, 1, 17))
    x = torch.full((3, 17), 0.25)
    y, s = ln(x, torch.tensor([0.05]))
    assert torch.isfinite(y).all()
    # one output LSB (floor of bias_int) plus float32 rounding of the product (|beta| <= 1)
    assert (y - ln.bias.detach()).abs().max() <= s.max().item() + 2.0**-23


def test_int_layernorm_requires_per_tensor_scale():
    ln = _int_layernorm(quant_mode=True)
    with pytest.raises(ValueError):
        ln(X_LN, None)
    with pytest.raises(ValueError):
        ln(X_LN, torch.tensor([0.1, 0.2]))


def test_int_layernorm_gradients_flow_to_input_weight_and_bias():
    ln = _int_layernorm(quant_mode=True)
    ref = _int_layernorm(quant_mode=False)
    x1, x2 = X_LN.clone().requires_grad_(), X_LN.clone().requires_grad_()
    g = randn(33, X_LN.shape)
    ln(x1, torch.tensor(0.1))[0].backward(g)
    ref(x2)[0].backward(g)
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(ln.weight.grad, ref.weight.grad) and torch.equal(ln.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("force_dequant", FORCE_DEQUANT)
def test_int_layernorm_force_dequant(force_dequant):
    ln = _int_layernorm(quant_mode=True, force_dequant=force_dequant)
    y, s = ln(X_LN, torch.tensor(0.1))
    ref = _int_layernorm(quant_mode=False)(X_LN)[0]
    if force_dequant in ("layernorm", "nonlinear"):
        assert not ln.quant_mode and s is None and torch.equal(y, ref)
    else:
        assert ln.quant_mode and s is not None and not torch.allclose(y, ref, atol=1e-4)


@needs_hf
def test_int_layernorm_agrees_with_transformers():
    ours, theirs = _int_layernorm(quant_mode=True), hf.IntLayerNorm((1, 10), 1e-5, output_bit=8, quant_mode=True)
    with torch.no_grad():
        theirs.weight.fill_(1.0)
        theirs.bias.fill_(1.0)
    a, sa = ours(X_LN, torch.tensor(0.1))
    b, sb = theirs(X_LN, torch.tensor(0.1))
    assert torch.allclose(sa, sb)
    # transformers keeps x / S unrounded and uses float sqrt; both within LN_ATOL of float LN.
    assert (a - b).abs().max() <= 2 * LN_ATOL


# =============================================================================================
# State-dict keys (ibert.md section 4)
# =============================================================================================


@pytest.mark.parametrize(
    "make, keys",
    [
        (lambda: Q.QuantEmbedding(3, 4), {"weight", "weight_scaling_factor", "weight_integer"}),
        (lambda: Q.QuantAct(8), {"x_min", "x_max", "act_scaling_factor"}),
        (lambda: Q.QuantLinear(3, 4), {"weight", "bias", "weight_integer", "fc_scaling_factor", "bias_integer"}),
        (lambda: Q.QuantLinear(3, 4, bias=False), {"weight", "weight_integer", "fc_scaling_factor"}),
        (lambda: Q.IntGELU(), set()),
        (lambda: Q.IntSoftmax(8), {"act.x_min", "act.x_max", "act.act_scaling_factor"}),
        (
            lambda: Q.IntLayerNorm(4, 1e-5),
            {"weight", "bias", "shift", "activation.x_min", "activation.x_max", "activation.act_scaling_factor"},
        ),
    ],
    ids=["QuantEmbedding", "QuantAct", "QuantLinear", "QuantLinear-nobias", "IntGELU", "IntSoftmax", "IntLayerNorm"],
)
def test_state_dict_keys_match_transformers_layout(make, keys):
    m = make()
    assert set(m.state_dict()) == keys
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    for k in ("x_min", "x_max", "act_scaling_factor", "weight_scaling_factor", "shift"):
        for name, shape in shapes.items():
            if name.split(".")[-1] == k:
                assert shape == (1,), name


@needs_hf
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: Q.QuantEmbedding(3, 4), lambda: hf.QuantEmbedding(3, 4)),
        (lambda: Q.QuantAct(8), lambda: hf.QuantAct(8)),
        (lambda: Q.QuantLinear(3, 4), lambda: hf.QuantLinear(3, 4)),
        (lambda: Q.IntSoftmax(8), lambda: hf.IntSoftmax(8)),
        (lambda: Q.IntLayerNorm(4, 1e-5), lambda: hf.IntLayerNorm(4, 1e-5)),
        (lambda: Q.IntGELU(), lambda: hf.IntGELU()),
    ],
    ids=["QuantEmbedding", "QuantAct", "QuantLinear", "IntSoftmax", "IntLayerNorm", "IntGELU"],
)
def test_state_dict_loads_transformers_module_state_strictly(ours, theirs):
    a, b = ours(), theirs()
    assert set(a.state_dict()) == set(b.state_dict())
    for k, v in b.state_dict().items():
        assert tuple(a.state_dict()[k].shape) == tuple(v.shape), k
    a.load_state_dict(b.state_dict(), strict=True)
