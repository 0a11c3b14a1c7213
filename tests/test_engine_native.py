"""The native CPU backend: at every ISA level this CPU runs, each fused chain equals the reference
backend bit for bit (torch.equal) on the sizes its kernels cut into blocks (K = 3072, N split into
L2-sized column parts, hidden 769) and on the worst-case GEMM values; threads and ISA levels never
change a number. Every method on awkward shapes, views and packed tokens, at every ISA level, is in
the table-driven test (tests/test_engine_backends.py, backends ``native@<isa>``).

In CI (CI=true) or with INTBERT_REQUIRE_NATIVE=1, a failed build of the extension (only a warning at
install time, where the engine falls back) fails here instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import intbert
from intbert.engine import freeze
from intbert.engine import backends as engine_backends
from intbert.engine.backends import ReferenceBackend, native
from intbert.engine.model import IntEmbeddings
from intbert.engine.modules import GELUConstants, IntLinear, ResidualRequant
from intbert.quantization import intops

from _engine_parts import int8, layernorm, linear, requant
from _sizes import randint
from test_ibert_modeling import SHAPES, batch, build, calibrated, tiny_config

REQUIRED = os.environ.get("INTBERT_REQUIRE_NATIVE") == "1" or os.environ.get("CI") == "true"
BUILT = native.native_available()
ISAS = native.available_isas() if BUILT else ()
needs_native = pytest.mark.skipif(not BUILT, reason="native kernels not built")


def test_native_kernels_are_built_where_required():
    if not BUILT:
        assert not REQUIRED, native.unavailable_reason()
        pytest.skip(native.unavailable_reason())
    assert native.current_isa() in ISAS and ISAS[0] == "scalar"


@pytest.fixture(params=ISAS)
def fast(request):
    """The native backend forced to one ISA level (all levels this CPU runs, scalar included)."""
    with native.use_isa(request.param):
        yield native.NativeBackend()


REF = ReferenceBackend()
# (rows, K, N): single elements, primes either side of the vector widths, BERT's 768 + 1, K = 3072, and
# N = 1100 at K = 768: a weight cut into L2-sized column parts (640 + 460 columns).
LINEAR_SIZES = [(1, 1, 1), (7, 17, 33), (33, 64, 129), (129, 769, 17), (5, 3072, 40), (64, 768, 96),
                (70, 768, 1100)]


@pytest.mark.parametrize("rows, K, N", LINEAR_SIZES)
@pytest.mark.parametrize("weight_bit", [8, 7])
def test_linear_and_linear_requant(fast, rows, K, N, weight_bit):
    lin, rq = linear(1, N, K, weight_bit), requant(2, N, 8, 31)
    x = int8(3, rows, K)
    assert torch.equal(REF.linear(x, lin), fast.linear(x, lin))
    assert torch.equal(REF.linear_requant(x, lin, rq), fast.linear_requant(x, lin, rq))
    per_tensor = requant(4, 1, 8, 31)
    assert torch.equal(REF.linear_requant(x, lin, per_tensor), fast.linear_requant(x, lin, per_tensor))


def test_gemm_is_exact_where_u8_s8_pair_sums_would_saturate_int16(fast):
    """x = 127 is 255 after the +128 flip: 2 * 255 * 127 = 64770 > 32767 would saturate vpmaddubsw."""
    K, N = 768, 32
    lin = linear(5, N, K)
    lin.weight.fill_(127)
    lin.weight[1::2] = -128  # the weight range edge (8-bit) on every other row
    lin.bias.zero_()
    for value in (127, -128):
        x = torch.full((3, K), value, dtype=torch.int8)
        want = REF.linear(x, lin)
        assert torch.equal(want, fast.linear(x, lin))
        assert int(want[0, 0]) == value * 127 * K


# Wider than the table's cases: N = 520 and N = 1300 at K = 768 (cut into L2-sized column parts).
@pytest.mark.parametrize("rows, K, N", [(65, 40, 520), (33, 768, 1300)])
def test_gelu_chain(fast, rows, K, N):
    lin = linear(8, N, K)
    scale = torch.rand(N, generator=torch.Generator().manual_seed(9)) * 1e-3 + 2**-20
    g = GELUConstants(*intops.gelu_constants(scale)[:3])
    rq1, rq2 = requant(10, N, 8, intops.GELU_OUTPUT_BITS, (40, 63)), requant(11, 1, 8, 31, (30, 31))
    x = int8(12, rows, K)
    assert torch.equal(REF.linear_gelu_requant(x, lin, g, rq1, rq2), fast.linear_gelu_requant(x, lin, g, rq1, rq2))
    # small shifts too (e < 16 takes intops.rescale's clamped direct path for 47-bit inputs)
    rq1 = requant(13, N, 8, intops.GELU_OUTPUT_BITS, (0, 20))
    assert torch.equal(REF.linear_gelu_requant(x, lin, g, rq1, rq2), fast.linear_gelu_requant(x, lin, g, rq1, rq2))


# Wider than the table's cases (K = 520, hidden 769), and LayerNorm outputs declared 32-bit.
@pytest.mark.parametrize("rows, K, H", [(1, 3, 1), (40, 520, 136), (3, 64, 769)])
@pytest.mark.parametrize("ln_input_bits", [31, 32])
def test_residual_layernorm_chain(fast, rows, K, H, ln_input_bits):
    lin = linear(13, H, K)
    add = ResidualRequant(requant(14, H, 22, 31, (25, 35)), requant(15, 1, 22, 31, (20, 25)))
    ln, rq = layernorm(16, H), requant(17, H, 8, ln_input_bits, (30, 40))
    x, res = int8(18, rows, K), int8(19, rows, H)
    want = REF.linear_residual_layernorm(x, lin, res, add, ln, rq)
    assert torch.equal(want, fast.linear_residual_layernorm(x, lin, res, add, ln, rq))
    # zero weights, zero bias and a zero residual row: a constant LayerNorm row (variance 0)
    lin = IntLinear(torch.zeros_like(lin.weight), torch.zeros_like(lin.bias), 8)
    res[0] = 0
    assert torch.equal(REF.linear_residual_layernorm(x, lin, res, add, ln, rq),
                       fast.linear_residual_layernorm(x, lin, res, add, ln, rq))


def _embeddings(H, vocab=50, positions=20):
    def add(seed, bits, in_a, in_b):
        return ResidualRequant(requant(seed, H, bits, in_a, (28, 32)), requant(seed + 1, 1, bits, in_b, (28, 32)))

    return IntEmbeddings(int8(30, vocab, H), int8(31, 2, H), int8(32, positions, H), add_token_type=add(33, 16, 8, 8),
                         add_position=add(35, 16, 16, 8), ln=layernorm(37, H), out=requant(38, H, 8, 32, (30, 40)))


@pytest.mark.parametrize("H", [1, 384])
def test_embeddings(fast, H):
    emb = _embeddings(H)
    ids, tids, pids = randint(40, 0, 50, (3, 11)), randint(41, 0, 2, (3, 11)), randint(42, 0, 20, (3, 11))
    assert torch.equal(REF.embed(emb, ids, tids, pids), fast.embed(emb, ids, tids, pids))
    with pytest.raises(ValueError, match="position ids must lie in"):
        fast.embed(emb, ids, tids, pids + 20)


def test_threads_do_not_change_the_integers():
    if not BUILT:
        pytest.skip(native.unavailable_reason())
    lin, rq = linear(60, 96, 768), requant(61, 96, 8, 31)
    x = int8(62, 200, 768)
    outs = [native.NativeBackend(num_threads=n).linear_requant(x, lin, rq) for n in (1, 2, 3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(outs[0], REF.linear_requant(x, lin, rq))


# ---------------------------------------------------------------------------------------------------
# End to end: a frozen model on the native backend


@needs_native
@pytest.mark.parametrize("shape", list(SHAPES))
def test_frozen_model_on_native_equals_reference_on_real_tokens(shape):
    model = calibrated(build(intbert.IBertModel, tiny_config(True, shape)))
    ref, fast = freeze(model, backend="reference"), freeze(model, backend="native")
    x = batch(7, b=4, seq=9, pad_last=3)
    keep = x["attention_mask"].bool()
    for isa in ISAS:
        with native.use_isa(isa):
            want = ref.encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                                      output_hidden_states=True)
            got = fast.encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                                      output_hidden_states=True)
        assert torch.equal(want[0][keep], got[0][keep]) and int(got[0][~keep].abs().sum()) == 0
        assert all(torch.equal(a[keep], b[keep]) for a, b in zip(want[1], got[1]))
    with fast.encoder.padded():  # every position computed, as the simulation and the ONNX graph do
        assert torch.equal(ref.encoder.encode(x["input_ids"], x["attention_mask"])[0],
                           fast.encoder.encode(x["input_ids"], x["attention_mask"])[0])
    # output_attentions takes the padded path (probabilities for every position), equal everywhere
    want = ref(**x, output_attentions=True)
    got = fast(**x, output_attentions=True)
    assert all(torch.equal(a, b) for a, b in zip(want.attentions, got.attentions))
    assert torch.equal(want.last_hidden_state, got.last_hidden_state)


@needs_native
def test_a_sentence_gets_the_same_integers_alone_and_in_a_padded_batch():
    model = calibrated(build(intbert.IBertModel, tiny_config(True)))
    frozen = freeze(model, backend="native")
    x = batch(8, b=3, seq=9, pad_last=4)
    together = frozen.encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])[0]
    n = int(x["attention_mask"][0].sum())
    alone = frozen.encoder.encode(x["input_ids"][:1, :n], None, x["token_type_ids"][:1, :n])[0]
    assert torch.equal(together[0, :n], alone[0])


@needs_native
def test_native_is_the_default_cpu_backend():
    assert engine_backends.default_backend_name(torch.device("cpu")) == "native"


def test_without_the_extension_the_engine_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(engine_backends, "_warned", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = engine_backends.default_backend_name(torch.device("cpu"))
        engine_backends.default_backend_name(torch.device("cpu"))
    assert first in ("cpu", "reference")
    assert len([w for w in caught if "native kernels are not built" in str(w.message)]) == 1
    with pytest.raises(native.NativeUnavailableError, match="pip install"):
        native.NativeBackend()


@needs_native
def test_INTBERT_ISA_forces_a_lower_level_for_the_process():
    code = "from intbert.engine.backends import native; print(native.current_isa())"
    env = dict(os.environ, INTBERT_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=needs_native)])
def test_engine_refuses_uint8_ids_and_empty_sequences_in_one_line(backend):
    frozen = freeze(calibrated(build(intbert.IBertModel, tiny_config(True))), backend=backend)
    with pytest.raises(ValueError, match="int64"):
        frozen(input_ids=torch.tensor([[5, 6]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="length 0"):
        frozen(input_ids=torch.zeros(2, 0, dtype=torch.long))


@needs_native
def test_native_amx_leaves_onnxruntime_amx_kernels_working_on_the_same_thread():
    """MLAS (onnxruntime) loads its AMX tile configuration once per thread; the native GEMM used to leave its
    own behind and MLAS's next tile instruction raised SIGILL (the demo: engine row, then the ONNX row)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    K, N = 768, 768
    w = randint(100, -127, 128, (K, N)).to(torch.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, N])],
        [helper.make_tensor("w", TensorProto.INT8, [K, N], w.numpy().tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = randint(101, 0, 256, (64, K)).to(torch.uint8)
    want = torch.matmul(a.int(), w.int())
    assert torch.equal(torch.from_numpy(session.run(None, {"a": a.numpy()})[0]), want)
    be = native.NativeBackend(num_threads=1)
    lin, rq = linear(102, 96, 768), requant(103, 96, 8, 31)
    for _ in range(2):
        be.linear_requant(int8(104, 64, 768), lin, rq)
        assert torch.equal(torch.from_numpy(session.run(None, {"a": a.numpy()})[0]), want)
