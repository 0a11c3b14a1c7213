"""The ONNX graph backend (the exporter's) computes the reference backend's integers, op by op and as a whole encoder.

``OnnxRuntimeBackend`` is a test-side adapter: a ``Backend`` on torch tensors whose every method builds a graph of
``OnnxGraphBackend`` nodes for that one call (inputs declared with dynamic axes, constants baked in as the exporter
bakes them), runs it in onnxruntime at full optimization and returns the result in the reference backend's dtype
(refusing a value that dtype cannot hold, so a wrapped cast cannot hide an error). It is an entry of the table in
tests/_backend_table.py (``"onnx"``), so the one backend-equality test (tests/test_engine_backends.py) compares
every method and composite, and a whole ``encode``, with ``ReferenceBackend`` on the table's awkward cases.

This file adds what that test does not cover: the encoder written as ONE
graph (what ``export_ibert_onnx`` writes) on every case of the table, padded positions included; the u8s8 kernels
where this CPU runs them exactly; and the ONNX ``MatMulInteger`` GEMMs against their definition,
``intops.int_matmul``, on awkward shapes with 7- and 8-bit operands.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import intbert  # noqa: E402
from intbert.engine import freeze  # noqa: E402
from intbert.engine.backends import onnx_intops as oi  # noqa: E402
from intbert.engine.backends.base import Backend  # noqa: E402
from intbert.engine.backends.onnx_graph import OnnxGraphBackend  # noqa: E402
from intbert.engine.backends.ort_gemm import u8s8_is_exact_for_8bit  # noqa: E402
from intbert.engine.modules import IntLinear  # noqa: E402
from intbert.engine.tokens import TokenLayout  # noqa: E402
from intbert.quantization import intops  # noqa: E402
from onnx import helper  # noqa: E402

from _sizes import AWKWARD_SIZES, randint  # noqa: E402
from test_ibert_modeling import batch, build, calibrated, tiny_config  # noqa: E402

#: The graph's opset and IR version: the exporter's (engine/backends/onnx_intops.py's ops need opset 18).
OPSET, IR_VERSION = 18, 8


def _session(proto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what a deployment runs
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _cast(value: np.ndarray, dtype: torch.dtype, what: str) -> torch.Tensor:
    """The graph's int64 result as ``dtype``, refusing values outside its range (a wrapping cast would hide them)."""
    t = torch.from_numpy(np.ascontiguousarray(value))
    info = torch.iinfo(dtype)
    if t.numel() and (int(t.min()) < info.min or int(t.max()) > info.max):
        raise AssertionError(f"{what}: graph values {int(t.min())}..{int(t.max())} do not fit {dtype}")
    return t.to(dtype)


class OnnxRuntimeBackend(Backend):
    """``OnnxGraphBackend``'s ops evaluated in onnxruntime on tensors: one small graph per call.

    ``weight_kernel`` / ``attention_kernel``: how the graph stores the GEMMs' right operands ("u8u8": exact on every
    CPU, the exporter's portable choice for 8-bit operands; "u8s8" where ``u8s8_is_exact_for_8bit``).
    """

    name = "onnx"

    def __init__(self, weight_kernel: str = "u8u8", attention_kernel: str = "u8u8"):
        self.weight_kernel, self.attention_kernel = weight_kernel, attention_kernel

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def run(self, what: str, build_fn, inputs: dict, dtypes):
        """Build ``build_fn(graph_backend, names)`` over graph inputs for ``inputs`` (tensor or None), run it.

        ``dtypes``: one torch dtype (one output) or a sequence of them (as many outputs). uint8 inputs are
        probabilities (the graph backend reads them at zero point 0); bool inputs are masks; the rest int64.
        """
        g = oi.GraphBuilder()
        be = OnnxGraphBackend(g, self.weight_kernel, self.attention_kernel)
        names, feeds, declared = {}, {}, []
        for key, t in inputs.items():
            if t is None:
                names[key] = None
                continue
            name = names[key] = g.reserve(key)
            t = t.detach().cpu()
            if t.dtype == torch.uint8:
                be.unsigned.add(name)
            array = np.ascontiguousarray(t.numpy() if t.dtype == torch.bool else t.to(torch.int64).numpy())
            feeds[name] = array
            elem = oi.BOOL if t.dtype == torch.bool else oi.INT64
            declared.append(helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(array.ndim)]))
        result = build_fn(be, names)
        single = isinstance(result, str)
        results = [result] if single else list(result)
        outputs = []
        for j, tensor in enumerate(results):
            out = g.reserve(f"out{j}")
            g.nodes.append(helper.make_node("Identity", [tensor], [out], name=g.fresh("Identity.")))
            outputs.append(helper.make_tensor_value_info(out, oi.INT64, None))
        graph = helper.make_graph(g.nodes, what.replace(" ", "_"), declared, outputs, initializer=g.initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        proto.ir_version = IR_VERSION
        got = _session(proto).run(None, feeds)
        dtypes = [dtypes] * len(results) if isinstance(dtypes, torch.dtype) else list(dtypes)
        tensors = [_cast(v, d, what) for v, d in zip(got, dtypes)]
        return tensors[0] if single else tensors

    # -- primitives ---------------------------------------------------------------------------------
    def linear(self, x, lin):
        return self.run("linear", lambda be, n: be.linear(n["x"], lin), {"x": x}, torch.int32)

    def matmul(self, a, b):
        return self.run("matmul", lambda be, n: be.matmul(n["a"], n["b"]), {"a": a, "b": b}, torch.int32)

    def requantize(self, q, rq):
        return self.run("requantize", lambda be, n: be.requantize(n["q"], rq), {"q": q}, rq.dtype)

    def residual(self, a, b, add):
        return self.run("residual", lambda be, n: be.residual(n["a"], n["b"], add), {"a": a, "b": b}, add.a.dtype)

    def softmax(self, scores, keep, sm):
        return self.run("softmax", lambda be, n: be.softmax(n["scores"], n["keep"], sm),
                        {"scores": scores, "keep": keep}, torch.uint8)

    def gelu(self, q, g):
        return self.run("gelu", lambda be, n: be.gelu(n["q"], g), {"q": q}, torch.int64)

    def layernorm(self, q, ln):
        return self.run("layernorm", lambda be, n: be.layernorm(n["q"], ln), {"q": q}, torch.int32)

    # -- inputs ---------------------------------------------------------------------------------------
    def position_ids(self, input_ids, pad_token_id):
        return self.run("position_ids", lambda be, n: be.position_ids(n["ids"], pad_token_id), {"ids": input_ids},
                        torch.int64)

    # -- composites, each one graph as the exporter writes it ----------------------------------------
    def linear_requant(self, x, lin, rq):
        return self.run("linear_requant", lambda be, n: be.linear_requant(n["x"], lin, rq), {"x": x}, rq.dtype)

    def linear_requant_many(self, x, pairs):
        pairs = list(pairs)
        return self.run("linear_requant_many", lambda be, n: be.linear_requant_many(n["x"], pairs), {"x": x},
                        [rq.dtype for _, rq in pairs])

    def linear_gelu_requant(self, x, lin, g, rq1, rq2):
        return self.run("linear_gelu_requant", lambda be, n: be.linear_gelu_requant(n["x"], lin, g, rq1, rq2),
                        {"x": x}, rq2.dtype)

    def linear_residual_layernorm(self, x, lin, residual, add, ln, rq):
        return self.run("linear_residual_layernorm",
                        lambda be, n: be.linear_residual_layernorm(n["x"], lin, n["residual"], add, ln, rq),
                        {"x": x, "residual": residual}, rq.dtype)

    def embed(self, emb, input_ids, token_type_ids, position_ids):
        return self.run("embed", lambda be, n: be.embed(emb, n["ids"], n["types"], n["positions"]),
                        {"ids": input_ids, "types": token_type_ids, "positions": position_ids}, emb.out.dtype)

    def attention(self, q, k, v, keep, sm):
        return tuple(self.run("attention", lambda be, n: be.attention(n["q"], n["k"], n["v"], n["keep"], sm),
                              {"q": q, "k": k, "v": v, "keep": keep}, (torch.int32, torch.uint8)))

    def attention_requant(self, q, k, v, tokens, heads, sm, rq):
        if tokens.is_packed:
            raise NotImplementedError("the ONNX graph backend takes padded tokens only")

        def build_fn(be, n):
            layout = TokenLayout(batch=None, length=None, keep=n["keep"])
            return be.attention_requant(n["q"], n["k"], n["v"], layout, heads, sm, rq)

        return self.run("attention_requant", build_fn, {"q": q, "k": k, "v": v, "keep": tokens.keep}, rq.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# The encoder as one graph (the exporter's path) on the table's awkward cases


@functools.lru_cache(maxsize=None)
def _encoder(hidden: int, heads: int, intermediate: int, length: int, weight_bit: int):
    """A calibrated two-layer I-BERT encoder of these sizes, frozen with the reference backend."""
    config = tiny_config(True, hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
                         num_hidden_layers=2, max_position_embeddings=max(length + 4, 16), weight_bit=weight_bit)
    return freeze(calibrated(build(intbert.IBertModel, config)), backend="reference").encoder


def _encode_graph(encoder, weight_kernel: str = "u8u8", attention_kernel: str = "u8u8"):
    """``encoder.encode`` on the ONNX graph backend, as one graph: (ids, mask, token types) -> int8 states."""
    g = oi.GraphBuilder()
    be = OnnxGraphBackend(g, weight_kernel, attention_kernel,
                          {id(m): name for name, m in encoder.named_modules() if name})
    ids, mask, types = (g.reserve(n) for n in ("input_ids", "attention_mask", "token_type_ids"))
    h, _, _ = encoder.encode(ids, mask, types, backend=be)
    g.nodes.append(helper.make_node("Identity", [h], ["hidden"], name=g.fresh("Identity.")))
    declared = [helper.make_tensor_value_info(n, oi.INT64, ["batch", "sequence"]) for n in (ids, mask, types)]
    graph = helper.make_graph(g.nodes, "encode", declared, [helper.make_tensor_value_info("hidden", oi.INT64, None)],
                              initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    return _session(proto)


def _inputs(case, seed: int) -> dict[str, torch.Tensor]:
    x = batch(seed, b=case.batch, seq=case.length, pad_last=0)
    mask = case.keep(seed).long()  # the case's real tokens, holes included
    return {"input_ids": x["input_ids"], "attention_mask": mask, "token_type_ids": x["token_type_ids"]}


def _table_cases():
    from _backend_table import CASES

    return CASES


@pytest.mark.parametrize("case", _table_cases(), ids=lambda c: c.name)
def test_encoder_as_one_graph_equals_the_reference_at_every_position(case):
    """What export_ibert_onnx writes: the whole encoder in one graph, padded positions and holes included."""
    encoder = _encoder(case.hidden, case.heads, case.intermediate, case.length, case.weight_bit)
    session = _encode_graph(encoder)
    for seed in (0, 1):
        x = _inputs(case, seed)
        want, _, _ = encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])
        got = session.run(None, {k: v.numpy() for k, v in x.items()})[0]
        assert np.array_equal(got, want.numpy()), (case.name, seed, int((got != want.numpy()).sum()))


@pytest.mark.skipif(not u8s8_is_exact_for_8bit(), reason="this CPU's u8 x s8 kernel saturates full-range operands")
@pytest.mark.parametrize("case", _table_cases()[:3], ids=lambda c: c.name)
def test_u8s8_kernels_give_the_same_integers_where_this_cpu_runs_them_exactly(case):
    """int8 right operands (weights and attention) at zero point 0: the kernel choice changes no integer."""
    encoder = _encoder(case.hidden, case.heads, case.intermediate, case.length, case.weight_bit)
    x = _inputs(case, 2)
    want, _, _ = encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    got = _encode_graph(encoder, "u8s8", "u8s8").run(None, {k: v.numpy() for k, v in x.items()})[0]
    assert np.array_equal(got, want.numpy())


def test_the_graph_backend_refuses_packed_tokens_and_unknown_kernels():
    with pytest.raises(ValueError, match="weight_kernel"):
        OnnxGraphBackend(oi.GraphBuilder(), "s8s8")
    be = OnnxGraphBackend(oi.GraphBuilder())
    with pytest.raises(NotImplementedError, match="pack"):
        be.token_layout("ids", "mask", pack=True)
    assert not be.packs_tokens and not be.supports(torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------------------
# MatMulInteger against the GEMM's definition, intops.int_matmul


def _int8(seed: int, bits: int, shape) -> torch.Tensor:
    """Values over the whole signed range of ``bits`` bits, the edges included (-2^(bits-1) is int8's -128)."""
    t = randint(seed, -(2 ** (bits - 1)), 2 ** (bits - 1), shape)
    flat = t.view(-1)
    flat[: min(2, flat.numel())] = torch.tensor([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])[: min(2, flat.numel())]
    return t.to(torch.int8)


@pytest.mark.parametrize("weight_kernel", ["u8u8", "u8s8"])
@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("K", AWKWARD_SIZES)
def test_linear_matmulinteger_equals_int_matmul(K, bits, weight_kernel):
    """x @ W^T through the graph's MatMulInteger (bias 0) = int_matmul(x, W^T), for 7- and 8-bit weights."""
    if weight_kernel == "u8s8" and bits == 8 and not u8s8_is_exact_for_8bit():
        pytest.skip("this CPU's u8 x s8 kernel saturates 8-bit weights (the exporter stores them u8u8 there)")
    top = 2 ** (bits - 1) - 1
    w = _int8(K, bits, (5, K)).clamp(-top, top)  # weights are symmetric: |w| <= 2^(bits-1) - 1
    lin = IntLinear(w, torch.zeros(5, dtype=torch.int32), bits)
    x = _int8(K + 1, 8, (3, 2, K))  # activations: full int8, -128 included
    want = intops.int_matmul(x, w.t(), 128, top)
    assert torch.equal(OnnxRuntimeBackend(weight_kernel).linear(x, lin), want)


@pytest.mark.parametrize("attention_kernel", ["u8u8", "u8s8"])
@pytest.mark.parametrize("L", [1, 7, 17, 65, 130])
def test_attention_matmulinteger_equals_int_matmul(L, attention_kernel):
    """Scores q k^T (int8 x int8) and context p v (uint8 probabilities x int8), batched over heads."""
    if attention_kernel == "u8s8" and not u8s8_is_exact_for_8bit():
        pytest.skip("this CPU's u8 x s8 kernel saturates full-range activations")
    adapter = OnnxRuntimeBackend(attention_kernel=attention_kernel)
    q, k = _int8(L, 8, (2, 3, L, 15)), _int8(L + 1, 8, (2, 3, L, 15))
    assert torch.equal(adapter.matmul(q, k.transpose(-1, -2)), intops.int_matmul(q, k.transpose(-1, -2), 128, 128))
    p = randint(L + 2, 0, 256, (2, 3, L, L)).to(torch.uint8)
    p.view(-1)[0] = 255
    v = _int8(L + 3, 7, (2, 3, L, 15))
    assert torch.equal(adapter.matmul(p, v), intops.int_matmul(p, v, 255, 128))
