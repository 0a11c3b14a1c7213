"""Compiled integer elementwise kernels shared by the fast CPU and CUDA backends.

The methods run the ``fused_ops`` chains (one compiled kernel each: C++ on CPU, Triton on CUDA) on
the accumulators of the backend's ``gemm`` (x @ W^T without the bias, which the kernels add).
"""

from __future__ import annotations

from . import fused_ops
from .reference import ReferenceBackend


class CompiledElementwise:
    """Mixin: a backend with ``gemm(x, lin)`` gets compiled requantize / softmax / GELU / LayerNorm chains."""

    def requantize(self, q, rq):
        # requant_i8 stores int8; a wider output (22 or 32 bits) takes the reference, which also keeps any clamp past
        # 31 bits out of compiled code (wrong under torch 2.13: quantization/fused.py says why).
        if rq.bits <= 8:
            return fused_ops.requant_i8(q, rq.m, rq.e, rq.bits, rq.input_bits)
        return ReferenceBackend.requantize(self, q, rq)

    def residual(self, a, b, add):
        return fused_ops.residual_i32(a, b, add.a.m, add.a.e, add.b.m, add.b.e, add.a.input_bits, add.b.input_bits,
                                      add.bits).to(add.a.dtype)

    def softmax(self, scores, keep, sm):
        c = sm.as_dict()
        return fused_ops.softmax_u8(scores, keep, c["pre_shift"], c["x0"], c["zm"], c["b"], c["c"], c["m"], c["e"],
                                    sm.output_bit)

    def gelu(self, q, g):
        return fused_ops.gelu_i64(q, g.b, g.c, g.one)

    def layernorm(self, q, ln):
        return fused_ops.layernorm_i32(q, ln.shift, ln.sign, ln.bias)

    # -- fused composites -----------------------------------------------------------------------------
    def linear_requant(self, x, lin, rq):
        return fused_ops.bias_requant_i8(self.gemm(x, lin), lin.bias, rq.m, rq.e, rq.bits, rq.input_bits)

    def linear_gelu_requant(self, x, lin, g, rq1, rq2):
        return fused_ops.bias_gelu_requant2_i8(self.gemm(x, lin), lin.bias, g.b, g.c, g.one, rq1.m, rq1.e, rq2.m,
                                               rq2.e, rq1.bits, rq1.input_bits, rq2.bits, rq2.input_bits)

    def linear_residual_layernorm(self, x, lin, residual, add, ln, rq):
        return fused_ops.bias_residual_layernorm_requant_i8(
            self.gemm(x, lin), lin.bias, residual, add.a.m, add.a.e, add.b.m, add.b.e, ln.shift, ln.sign, ln.bias,
            rq.m, rq.e, add.a.input_bits, add.b.input_bits, add.bits, rq.bits, rq.input_bits)
