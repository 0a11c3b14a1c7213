"""Compositions of the ``intops`` definitions that one layer runs back to back, compiled as one kernel each.

Each function is nothing but the definitions called in sequence (so it is the reference by
construction); ``fused.twin`` compiles it, which removes the int64 round trips to memory between
the steps. tests/test_engine_backends.py checks every backend against the reference with torch.equal.
"""

from __future__ import annotations

import torch

from ...quantization import fused, intops


def _bias_requant(acc, bias, m, e, bits: int, input_bits: int):
    """GEMM accumulator (no bias yet) -> + int32 bias -> requantized ``bits``-bit value (int64)."""
    return intops.requantize(acc.long() + bias, m, e, bits, input_bits)


@fused.twin
def bias_requant_i8(acc, bias, m, e, bits: int, input_bits: int):
    return _bias_requant(acc, bias, m, e, bits, input_bits).to(torch.int8)


@fused.twin
def requant_i8(q, m, e, bits: int, input_bits: int):
    return intops.requantize(q.long(), m, e, bits, input_bits).to(torch.int8)


@fused.twin
def bias_gelu_requant2_i8(acc, bias, gb, gc, gone, m1, e1, m2, e2, bits1: int, in1: int, bits2: int, in2: int):
    """FFN up: + bias -> i-GELU (|.| < 2^47) -> 8-bit -> 8-bit (two requantizations, as the simulation)."""
    g = intops.int_gelu(acc.long() + bias, gb, gc, gone)
    return intops.requantize(intops.requantize(g, m1, e1, bits1, in1), m2, e2, bits2, in2).to(torch.int8)


def _residual(a, b, ma, ea, ina: int, mb, eb, inb: int, bits: int):
    total = intops.rescale(a.long(), ma, ea, ina) + intops.rescale(b.long(), mb, eb, inb)
    return total.clamp(*intops.quant_bounds(bits))


@fused.twin
def residual_i32(a, b, ma, ea, mb, eb, ina: int, inb: int, bits: int):
    return _residual(a, b, ma, ea, ina, mb, eb, inb, bits).to(torch.int32)


@fused.twin
def bias_residual_layernorm_requant_i8(acc, bias, res, ma, ea, mb, eb, shift, sign, ln_bias, m, e,
                                       ina: int, inb: int, add_bits: int, bits: int, input_bits: int):
    """dense accumulator + bias, + residual (22-bit) -> integer LayerNorm -> 8-bit."""
    h = _residual(acc.long() + bias, res, ma, ea, ina, mb, eb, inb, add_bits)
    n = intops.int_layernorm(h, shift, sign, ln_bias)
    return intops.requantize(n, m, e, bits, input_bits).to(torch.int8)


@fused.twin
def layernorm_i32(q, shift, sign, ln_bias):
    return intops.int_layernorm(q.long(), shift, sign, ln_bias).to(torch.int32)


@fused.twin
def softmax_u8(scores, keep, pre_shift, x0, zm, b, c, m, e, output_bit: int):
    consts = {"pre_shift": pre_shift, "x0": x0, "zm": zm, "b": b, "c": c, "m": m, "e": e}
    return intops.int_softmax(scores, keep, consts, output_bit).to(torch.uint8)


@fused.twin
def gelu_i64(q, gb, gc, gone):
    return intops.int_gelu(q.long(), gb, gc, gone)
