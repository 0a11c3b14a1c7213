"""Every engine backend equals the reference backend bit for bit: one test over (backend x case).

The backends and the cases come from tests/_backend_table.py: each REGISTRY name (the native backend at
each ISA level), on head sizes 1 and 15, lengths 1 to 130 that are no multiple of 8, 16 or 64, batches
with padding holes, row-strided and column-major input views, 7- and 8-bit weights. Each case runs every
``Backend`` method and composite and a whole frozen encoder's ``encode`` on the backend and on
``ReferenceBackend`` (the definition), and compares them with ``torch.equal``; constants carry values at
the edges of each op's input range (_engine_parts.py). A backend that packs tokens gets packed
TokenLayouts and is compared on the real positions (padded ones must be 0), then padded on every one.

Backends whose elementwise kernels are compiled twins (``quantization.fused``) run them on these small
tensors too (``fused.MIN_NUMEL`` lowered to 1), and the test asserts that compiled calls ran: with
compilation strict (conftest.py) a twin that does not compile raises, and a silent eager fallback would
not count (the last tests break torch.compile to show both).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import intbert
from intbert.engine import freeze
from intbert.engine.backends import ReferenceBackend, default_backend_name, resolve_backend
from intbert.engine.model import IntEmbeddings
from intbert.engine.modules import GELUConstants, ResidualRequant, SoftmaxConstants
from intbert.engine.tokens import TokenLayout
from intbert.quantization import fused, intops

from _backend_table import BACKENDS, CASES, Case, Entry, lay_out, open_backend, unlisted_backends
from _engine_parts import int8, layernorm, linear, requant
from _sizes import randint
from test_ibert_modeling import batch, build, calibrated, tiny_config

REF = ReferenceBackend()
FAST = [name for name in BACKENDS if name != "reference"]
#: Softmax input scales: 3e-4 (no pre-shift), 1e-7 (below i-exp's 2^-14 floor: the scores are pre-shifted).
SOFTMAX_SCALES = (3e-4, 1e-7)
#: Shifts of the requantization after a LayerNorm: its outputs reach about 2^28 here (tests/_engine_parts.layernorm), so
#: q * m / 2^e with m ~ 2^30 lands mostly inside int8 for e in [52, 56) (about 10% saturated); e in [30, 40) saturated
#: every element, and the requantization's rounding went untested.
LN_OUT_E = (52, 56)


def test_every_registered_backend_is_in_the_table():
    """(The table may hold more: an adapter that runs a backend another way, e.g. the ONNX graph in onnxruntime.)"""
    assert not unlisted_backends(), f"add {sorted(unlisted_backends())} to tests/_backend_table.py:BACKENDS"


def _pairs():
    """(backend, case) params. A compiled backend's cases are marked slow: its first case compiles every kernel (about
    90 s on a cold cache), and a strided or transposed case compiles them all again for the new strides (305 s and
    144 s, 2 busy cores); the rest of the file takes about a minute."""
    for name in FAST:
        for case in CASES:
            slow = BACKENDS[name].compiled
            yield pytest.param(name, case, id=f"{name}-{case.name}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("name, case", list(_pairs()))
def test_backend_equals_the_reference_on_every_method(name, case, monkeypatch):
    _compare(BACKENDS[name], case, monkeypatch)


def _compare(entry: Entry, case: Case, monkeypatch) -> None:
    reason = entry.missing()
    if reason:
        pytest.skip(reason)
    if entry.compiled:  # the compiled twins on small tensors too, whatever INTBERT_COMPILE says
        monkeypatch.setattr(fused, "_state", dict(fused._state, enabled=True))
        monkeypatch.setattr(fused, "MIN_NUMEL", 1)
    before = fused.compiled_calls()
    with open_backend(entry) as be, torch.no_grad():  # as the engine runs (grad mode would be a second compile)
        bad = _mismatches(be, torch.device(entry.device), case)
    assert not bad, f"{be.name} differs from the reference on case {case.name}:\n  " + "\n  ".join(bad)
    if entry.compiled:
        assert fused.compiled_calls() > before, f"{be.name}: no compiled kernel ran; the eager definitions were compared"


# ---------------------------------------------------------------------------------------------------
# One case: every method on the backend and on the reference


class _Checker:
    """Collects mismatches (all of them, not only the first) as 'what: how'."""

    def __init__(self):
        self.bad: list[str] = []

    def __call__(self, what: str, want: torch.Tensor, got: torch.Tensor) -> None:
        got = got.cpu()
        if want.dtype != got.dtype or want.shape != got.shape:
            self.bad.append(f"{what}: got {got.dtype} {tuple(got.shape)}, want {want.dtype} {tuple(want.shape)}")
        elif not torch.equal(want, got):
            diff = (want.long() - got.long()).abs()
            at = tuple(int(i) for i in diff.nonzero()[0])
            self.bad.append(f"{what}: {int((diff != 0).sum())} of {want.numel()} differ, max |diff| {int(diff.max())}; "
                            f"first at {at}: got {int(got[at])}, want {int(want[at])}")


def _embeddings(H: int, positions: int) -> IntEmbeddings:
    def add(seed, bits, in_a, in_b):
        return ResidualRequant(requant(seed, H, bits, in_a, (28, 32)), requant(seed + 1, 1, bits, in_b, (28, 32)))

    return IntEmbeddings(int8(30, 50, H), int8(31, 2, H), int8(32, positions, H), add_token_type=add(33, 16, 8, 8),
                         add_position=add(35, 16, 16, 8), ln=layernorm(37, H), out=requant(38, H, 8, 32, LN_OUT_E))


def _mismatches(be, dev: torch.device, case: Case) -> list[str]:
    B, L, H, I, nh, d, wb = case.batch, case.length, case.hidden, case.intermediate, case.heads, case.head_size, \
        case.weight_bit
    check = _Checker()

    def put(t):  # the backend's input: on its device, in the case's layout (the reference gets t as built)
        return lay_out(t.to(dev), case.layout)

    def mod(m):  # constants on the backend's device (a copy: .to() moves a module in place)
        return m if dev.type == "cpu" else copy.deepcopy(m).to(dev)

    keep = case.keep()  # (B, L) bool
    x, xi = int8(1, B, L, H), int8(2, B, L, I)
    lin_h, lin_up, lin_down = linear(3, H, H, wb), linear(5, I, H, wb), linear(7, H, I, wb)
    rq_h, rq_1 = requant(9, H, 8, 31), requant(11, 1, 8, 31)

    # -- primitives -------------------------------------------------------------------------------------
    check("linear", REF.linear(x, lin_h), be.linear(put(x), mod(lin_h)))
    check("linear (K = intermediate)", REF.linear(xi, lin_down), be.linear(put(xi), mod(lin_down)))

    qh, kh, vh = (int8(s, B, nh, L, d) for s in (13, 14, 15))
    probs = randint(16, 0, 256, (B, nh, L, L)).to(torch.uint8)
    probs.view(-1)[:2] = torch.tensor([255, 0], dtype=torch.uint8)
    scores = REF.matmul(qh, kh.transpose(-1, -2))
    check("matmul q k^T", scores, be.matmul(put(qh), put(kh).transpose(-1, -2)))
    check("matmul p v", REF.matmul(probs, vh), be.matmul(put(probs), put(vh)))

    wide = randint(17, -(2**31) + 1, 2**31, (B, L, H)).to(torch.int32)
    wide.view(-1)[:3] = torch.tensor([2**31 - 1, -(2**31) + 1, 0], dtype=torch.int32)[: wide.numel()]
    for what, rq in (("int32 -> 8 bits per channel", rq_h), ("int32 -> 8 bits, e in [0, 63]", requant(19, 1, 8, 32, (0, 63))),
                     ("int32 -> 22 bits", requant(21, H, 22, 31, (25, 35))), ("int32 -> 32 bits", requant(23, 1, 32, 31, (28, 32)))):
        check(f"requantize {what}", REF.requantize(wide, rq), be.requantize(put(wide), mod(rq)))
    rq_88 = requant(25, 1, 8, 8, (28, 32))  # the layer's int8 -> int8 pre-FFN requantization
    check("requantize int8 -> 8 bits", REF.requantize(x, rq_88), be.requantize(put(x), mod(rq_88)))
    g47 = randint(27, -(2**46), 2**46, (B, L, I))  # i-GELU outputs (|q| < 2^47)
    for what, rq in (("e >= 16", requant(29, I, 8, 47, (40, 63))), ("e < 16", requant(31, I, 8, 47, (0, 16)))):
        check(f"requantize int64 47-bit -> 8 bits, {what}", REF.requantize(g47, rq), be.requantize(put(g47), mod(rq)))

    acc = REF.linear(x, lin_h)
    add22 = ResidualRequant(requant(33, H, 22, 31, (25, 35)), requant(35, 1, 22, 31, (20, 25)))
    check("residual 22-bit", REF.residual(acc, x, add22), be.residual(put(acc), put(x), mod(add22)))
    add16 = ResidualRequant(requant(37, H, 16, 8, (28, 32)), requant(39, 1, 16, 8, (28, 32)))
    check("residual 16-bit (int8 + int8)", REF.residual(x, x.flip(0), add16), be.residual(put(x), put(x.flip(0)), mod(add16)))

    keep4 = keep[:, None, None, :]
    for scale in SOFTMAX_SCALES:
        sm = SoftmaxConstants(8, **intops.softmax_constants(torch.tensor([scale])))
        check(f"softmax (scale {scale}, mask)", REF.softmax(scores, keep4, sm),
              be.softmax(put(scores), put(keep4), mod(sm)))
        check(f"softmax (scale {scale}, no mask)", REF.softmax(scores, None, sm), be.softmax(put(scores), None, mod(sm)))

    gelu_scale = torch.rand(I, generator=torch.Generator().manual_seed(41)) * 1e-3 + 2**-20
    g = GELUConstants(*intops.gelu_constants(gelu_scale)[:3])
    acc_up = REF.linear(x, lin_up)
    check("gelu", REF.gelu(acc_up, g), be.gelu(put(acc_up), mod(g)))

    h22 = randint(43, -(2**21), 2**21, (B, L, H)).to(torch.int32)
    h22[0, 0] = 5  # a constant row: variance 0
    ln = layernorm(45, H)
    check("layernorm", REF.layernorm(h22, ln), be.layernorm(put(h22), mod(ln)))

    # -- composites --------------------------------------------------------------------------------------
    for what, rq in (("per channel", rq_h), ("per tensor", rq_1)):
        check(f"linear_requant {what}", REF.linear_requant(x, lin_h, rq), be.linear_requant(put(x), mod(lin_h), mod(rq)))
    pairs = [(lin_h, rq_h), (linear(47, H, H, wb), rq_1), (linear(49, H, H, wb), requant(51, H, 8, 31))]
    got = be.linear_requant_many(put(x), [(mod(lin), mod(rq)) for lin, rq in pairs])
    for i, (want, out) in enumerate(zip(REF.linear_requant_many(x, pairs), got)):
        check(f"linear_requant_many [{i}]", want, out)
    rq_out = requant(53, 1, 8, 31, (28, 32))
    for what, rq_g in (("e >= 16", requant(55, I, 8, intops.GELU_OUTPUT_BITS, (40, 63))),
                       ("e < 16", requant(57, I, 8, intops.GELU_OUTPUT_BITS, (0, 16)))):
        check(f"linear_gelu_requant {what}", REF.linear_gelu_requant(x, lin_up, g, rq_g, rq_out),
              be.linear_gelu_requant(put(x), mod(lin_up), mod(g), mod(rq_g), mod(rq_out)))
    rq_ln = requant(59, H, 8, 31, LN_OUT_E)
    check("linear_residual_layernorm", REF.linear_residual_layernorm(xi, lin_down, x, add22, ln, rq_ln),
          be.linear_residual_layernorm(put(xi), mod(lin_down), put(x), mod(add22), mod(ln), mod(rq_ln)))

    # -- token layouts: embeddings and attention -----------------------------------------------------------
    ids = randint(61, 0, 50, (B, L))
    tids, pids = randint(62, 0, 2, (B, L)), randint(63, 0, L + 2, (B, L))
    emb = _embeddings(H, L + 2)
    padded = TokenLayout.padded(ids, keep)
    if be.packs_tokens:  # (T, ...) real tokens; the reference's (B, L, ...) answer is compared on them
        tokens = TokenLayout.packed(ids.to(dev), keep.to(dev))
        pack, real = (lambda t: put(tokens.pack(t.to(dev)))), (lambda t: t[keep])
    else:
        tokens = TokenLayout.padded(ids.to(dev), keep.to(dev))
        pack, real = put, (lambda t: t)
    check("embed", real(REF.embed(emb, ids, tids, pids)), be.embed(mod(emb), *(pack(t) for t in (ids, tids, pids))))
    q, k, v = (int8(s, B, L, H) for s in (64, 65, 66))
    rq_ctx = requant(67, H, 8, 31, (20, 28))
    for scale in SOFTMAX_SCALES:
        sm = SoftmaxConstants(8, **intops.softmax_constants(torch.tensor([scale])))
        want = REF.attention_requant(q, k, v, padded, nh, sm, rq_ctx)
        got = be.attention_requant(pack(q), pack(k), pack(v), tokens, nh, mod(sm), mod(rq_ctx))
        check(f"attention_requant (scale {scale})", real(want), got)

    # -- a whole encoder ---------------------------------------------------------------------------------
    _check_encode(be, dev, case, check)
    return check.bad


@functools.lru_cache(maxsize=None)
def _frozen_encoder(case: Case):
    """A calibrated one-layer I-BERT of the case's head count, head size and FFN width, frozen (reference)."""
    config = tiny_config(True, hidden_size=case.hidden, num_attention_heads=case.heads,
                         intermediate_size=case.intermediate, num_hidden_layers=1,
                         max_position_embeddings=max(case.length + 4, 16))
    was = fused.is_enabled()
    fused.set_enabled(False)  # the simulation is not under test here: calibrate without compiling its twins
    try:
        return freeze(calibrated(build(intbert.IBertModel, config)), backend="reference").encoder
    finally:
        fused.set_enabled(was)


def _check_encode(be, dev, case: Case, check: _Checker) -> None:
    ref = _frozen_encoder(case)
    x = batch(70 + case.batch, b=case.batch, seq=case.length, pad_last=0)
    keep = case.keep()
    ids, mask, tids = x["input_ids"], keep.long(), x["token_type_ids"]
    want, want_states, _ = ref.encode(ids, mask, tids, output_hidden_states=True)
    fast = copy.deepcopy(ref).to(dev)
    fast.backend = lambda: be  # the table's backend instance (an ISA level forced, an adapter not in REGISTRY)
    got, got_states, _ = fast.encode(ids.to(dev), mask.to(dev), tids.to(dev), output_hidden_states=True)
    real = keep if be.packs_tokens else torch.ones_like(keep)
    check("encode", want[real], got.cpu()[real])
    for i, (w, s) in enumerate(zip(want_states, got_states)):
        check(f"encode hidden state {i}", w[real], s.cpu()[real])
    if be.packs_tokens:
        check("encode: padded positions are 0", torch.zeros_like(want[~keep]), got.cpu()[~keep])
        with fast.padded():  # every position computed, as the reference does
            check("encode (padded)", want, fast.encode(ids.to(dev), mask.to(dev), tids.to(dev))[0])


# ---------------------------------------------------------------------------------------------------
# The table test fails when the compiled twins do not compile


def _compile_raises(*args, **kwargs):
    raise RuntimeError("boom: no C++ compiler")


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "fallback"])
def test_a_compiled_backend_whose_twins_fail_to_compile_fails_the_table_test(monkeypatch, strict):
    """torch.compile raising makes the table test of a compiled backend fail: strict, with the compile error;
    with the user-facing eager fallback (which warns), because no compiled call ran."""
    name = next((n for n in FAST if BACKENDS[n].compiled and not BACKENDS[n].missing()), None)
    if name is None:
        pytest.skip("no backend with compiled kernels runs here")
    monkeypatch.setattr(fused, "_state", dict(fused._state, strict=strict))
    monkeypatch.setattr(fused, "_compiled", {})  # nothing compiled yet: the next twin call compiles
    monkeypatch.setattr(torch, "compile", _compile_raises)
    if strict:
        with pytest.raises(fused.CompiledTwinError, match="boom"):
            _compare(BACKENDS[name], CASES[0], monkeypatch)
    else:
        with pytest.warns(RuntimeWarning, match="torch.compile of .* failed .*boom"):
            with pytest.raises(AssertionError, match="no compiled kernel ran"):
                _compare(BACKENDS[name], CASES[0], monkeypatch)


def test_backend_choice_by_device_and_refusals():
    cpu = torch.device("cpu")
    from intbert.engine.backends import native

    fallback = "reference" if BACKENDS["cpu"].missing() else "cpu"
    assert default_backend_name(cpu) == ("native" if native.native_available() else fallback)
    assert resolve_backend("reference", cpu).name == "reference"
    with pytest.raises(ValueError, match="cannot run on cpu"):
        resolve_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown engine backend"):
        resolve_backend("fast", cpu)
