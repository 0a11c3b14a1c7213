"""The native CPU backend: intbert's own C++ kernels (``csrc/``, built by ``pip install``).

Every layer runs in a handful of native calls: one int8 GEMM per linear with its whole integer chain
(bias, requantization, i-GELU, residual + LayerNorm) applied to each block of rows while it is still
in cache, one fused attention call (scores -> i-softmax -> context -> requantization, per sequence
and head, the score matrix never leaving a per-thread block), and one call for the embeddings. Only
real tokens are computed (``packs_tokens``; ``engine/tokens.py``). The kernels exist per ISA level,
chosen at run time (AMX > AVX-512 VNNI > AVX2 > scalar; ``INTBERT_ISA`` or :func:`use_isa` lower it),
and the scalar C++ is the definition the others are tested against; every level equals the
reference backend bit for bit (tests/test_engine_native.py).

Threads: one native pool for the whole forward, sized to ``torch.get_num_threads()`` at each call
(or the backend's ``num_threads``).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from ..modules import GELUConstants, IntLinear, LayerNormConstants, Requant, ResidualRequant, SoftmaxConstants
from .reference import ReferenceBackend

try:
    from ... import _native
except ImportError as exc:  # not built (no compiler at install time, or a non-x86 CPU)
    _native, _IMPORT_ERROR = None, exc
else:
    _IMPORT_ERROR = None

#: ISA levels of csrc/kernels.h, lowest first.
ISA_NAMES = ("scalar", "avx2", "avx512", "amx")


class NativeUnavailableError(RuntimeError):
    """The native kernels were not built for this installation."""


def native_available() -> bool:
    return _native is not None


def unavailable_reason() -> str:
    return f"intbert's native kernels are not built ({_IMPORT_ERROR}); reinstall with a C++ compiler: pip install -e ."


def _require():
    if _native is None:
        raise NativeUnavailableError(unavailable_reason())
    return _native


def available_isas() -> tuple[str, ...]:
    """The ISA levels this CPU runs, lowest first (each can be forced for tests)."""
    return ISA_NAMES[: _require().detected_isa() + 1]


def current_isa() -> str:
    return ISA_NAMES[_require().isa()]


@contextlib.contextmanager
def use_isa(name: str):
    """Run the native kernels at a lower ISA level inside the block (tests every path on one CPU)."""
    native = _require()
    if name not in available_isas():
        raise ValueError(f"ISA {name!r} is not available on this CPU; available: {available_isas()}")
    before = native.isa()
    native.set_isa(ISA_NAMES.index(name))
    try:
        yield
    finally:
        native.set_isa(before)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _rows(x: torch.Tensor, dtype: torch.dtype, width: int, what: str) -> torch.Tensor:
    """x as a CPU (rows, width) matrix of ``dtype`` with unit column stride (rows may be strided, e.g. the
    query / key / value column blocks of one fused GEMM output); anything else is a caller's bug, refused."""
    if x.dtype != dtype or x.device.type != "cpu" or x.shape[-1] != width:
        raise ValueError(f"native {what}: expected {dtype} (..., {width}) on the CPU, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    x = x.reshape(-1, width) if x.dim() != 2 else x
    return x if x.stride(-1) == 1 and (x.shape[0] <= 1 or x.stride(0) >= width) else x.contiguous()


def _ld(x: torch.Tensor) -> int:
    """Leading dimension (elements between rows) of a matrix from :func:`_rows`."""
    return x.stride(0) if x.shape[0] > 1 else x.shape[1]


class NativeBackend(ReferenceBackend):
    name = "native"
    packs_tokens = True

    def __init__(self, num_threads: int | None = None):
        _require()
        self.num_threads = num_threads
        self._weights: dict[int, tuple] = {}
        self._consts: dict[tuple, tuple] = {}

    def supports(self, device):
        return device.type == "cpu"

    # -- caches: packed weights per ISA, constants as the tuples the binding parses ----------------------
    def _threads(self):
        n = self.num_threads or torch.get_num_threads()
        if _native.threads() != n:
            _native.set_threads(n)

    def _packed(self, lin: IntLinear, chunked: bool = True):
        """The weight packed for the current ISA; ``chunked`` (elementwise epilogues): in L2-sized column parts."""
        isa = _native.isa()
        key = (id(lin), chunked)
        entry = self._weights.get(key)
        if entry is None or entry[0] is not lin.weight or entry[1] != isa:  # replaced buffer (load, .to()) or ISA
            w = lin.weight.contiguous()
            n, k = w.shape
            entry = self._weights[key] = (lin.weight, isa, _native.pack_weight(_ptr(w), n, k, k, 1, isa, chunked))
        return entry[2]

    def _cached(self, key: tuple, sources: tuple, build):
        """build() -> (value, tensors to keep alive), once per key while ``sources`` are the same objects."""
        entry = self._consts.get(key)
        if entry is None or any(a is not b for a, b in zip(entry[0], sources)):
            entry = self._consts[key] = (sources, *build())
        return entry[1]

    @staticmethod
    def _channels(t: torch.Tensor, channels: int, what: str) -> torch.Tensor:
        """A per-tensor (1,) or per-channel (C,) int64 constant as a contiguous (C,) array."""
        t = t.reshape(-1)
        if t.numel() not in (1, channels):
            raise ValueError(f"native {what}: constant of {t.numel()} values for {channels} channels")
        return t.to(torch.int64).expand(channels).contiguous()

    def _rq(self, rq: Requant, channels: int):
        def build():
            m, e = self._channels(rq.m, channels, "requant m"), self._channels(rq.e, channels, "requant e")
            return (_ptr(m), _ptr(e), rq.bits, rq.input_bits), (m, e)

        return self._cached((id(rq), channels), (rq.m, rq.e), build)

    def _add(self, add: ResidualRequant, channels: int):
        return self._rq(add.a, channels), self._rq(add.b, channels), add.bits

    def _ln(self, ln: LayerNormConstants, channels: int):
        def build():
            sign, bias = self._channels(ln.sign, channels, "LayerNorm sign"), self._channels(ln.bias, channels, "LayerNorm bias")
            return (int(ln.shift), _ptr(sign), _ptr(bias)), (sign, bias)

        return self._cached((id(ln), channels), (ln.shift, ln.sign, ln.bias), build)

    def _gelu(self, g: GELUConstants, channels: int):
        def build():
            t = [self._channels(getattr(g, n), channels, "i-GELU " + n) for n in ("b", "c", "one")]
            return tuple(_ptr(x) for x in t), t

        return self._cached((id(g), channels), (g.b, g.c, g.one), build)

    def _softmax(self, sm: SoftmaxConstants):
        def build():
            c = sm.as_dict()
            return tuple(int(c[n]) for n in ("pre_shift", "x0", "zm", "b", "c", "m", "e")) + (sm.output_bit,), ()

        return self._cached((id(sm),), tuple(sm.as_dict().values()), build)

    # -- fused composites (the whole encoder layer) ---------------------------------------------------
    def linear_requant(self, x, lin, rq):
        if rq.bits > 8:
            return super().linear_requant(x, lin, rq)
        self._threads()
        N, K = lin.weight.shape
        x2 = _rows(x, torch.int8, K, "linear input")
        out = torch.empty(x2.shape[0], N, dtype=torch.int8)
        _native.linear_requant(self._packed(lin), _ptr(x2), x2.shape[0], _ld(x2), _ptr(lin.bias), self._rq(rq, N),
                               _ptr(out), N)
        return out.view(*x.shape[:-1], N)

    def linear_requant_many(self, x, pairs):
        """One GEMM over the stacked weights (query, key, value: N = 3H), each requantized by its own
        constants; the results are column views of one (rows, sum N) int8 matrix."""
        pairs = tuple(pairs)
        if len(pairs) < 2 or any(rq.bits > 8 or rq.bits != pairs[0][1].bits or rq.input_bits != pairs[0][1].input_bits
                                 for _, rq in pairs):
            return super().linear_requant_many(x, pairs)
        stacked, rq = self._stacked(pairs)
        out = self.linear_requant(x, stacked, rq)
        widths = [lin.weight.shape[0] for lin, _ in pairs]
        return list(out.split(widths, dim=-1))

    def _stacked(self, pairs):
        """The pairs as one IntLinear (weights and biases concatenated) and one per-channel Requant."""
        def build():
            lins = [lin for lin, _ in pairs]
            stacked = IntLinear(torch.cat([l.weight for l in lins]), torch.cat([l.bias for l in lins]),
                                max(l.weight_bit for l in lins))
            first = pairs[0][1]
            m = torch.cat([self._channels(rq.m, l.weight.shape[0], "requant m") for l, rq in pairs])
            e = torch.cat([self._channels(rq.e, l.weight.shape[0], "requant e") for l, rq in pairs])
            # Only what the kernels read (a Requant would also build a float scale: no float op in the encoder).
            rq = SimpleNamespace(m=m, e=e, bits=first.bits, input_bits=first.input_bits)
            return (stacked, rq), ()

        key = tuple(id(m) for pair in pairs for m in pair)
        sources = tuple(t for lin, rq in pairs for t in (lin.weight, lin.bias, rq.m, rq.e))
        return self._cached(key, sources, build)

    def linear_gelu_requant(self, x, lin, g, rq1, rq2):
        if rq2.bits > 8:
            return super().linear_gelu_requant(x, lin, g, rq1, rq2)
        self._threads()
        N, K = lin.weight.shape
        x2 = _rows(x, torch.int8, K, "FFN input")
        out = torch.empty(x2.shape[0], N, dtype=torch.int8)
        _native.linear_gelu_requant2(self._packed(lin), _ptr(x2), x2.shape[0], _ld(x2), _ptr(lin.bias), self._gelu(g, N),
                                     self._rq(rq1, N), self._rq(rq2, N), _ptr(out), N)
        return out.view(*x.shape[:-1], N)

    def linear_residual_layernorm(self, x, lin, residual, add, ln, rq):
        if rq.bits > 8 or residual.dtype != torch.int8:
            return super().linear_residual_layernorm(x, lin, residual, add, ln, rq)
        self._threads()
        N, K = lin.weight.shape
        x2 = _rows(x, torch.int8, K, "dense input")
        res = _rows(residual, torch.int8, N, "residual")
        if res.shape[0] != x2.shape[0]:
            raise ValueError(f"native residual: {res.shape[0]} rows for {x2.shape[0]} input rows")
        out = torch.empty(x2.shape[0], N, dtype=torch.int8)
        _native.linear_residual_ln_requant(self._packed(lin, chunked=False), _ptr(x2), x2.shape[0], _ld(x2), _ptr(lin.bias), _ptr(res), _ld(res),
                                           self._add(add, N), self._ln(ln, N), self._rq(rq, N), _ptr(out), N)
        return out.view(*x.shape[:-1], N)

    def attention_requant(self, q, k, v, tokens, heads, sm, rq):
        if not tokens.is_packed or rq.bits > 8:
            return super().attention_requant(q, k, v, tokens, heads, sm, rq)
        self._threads()
        H = q.shape[-1]
        if H % heads:
            raise ValueError(f"native attention: hidden size {H} is not a multiple of {heads} heads")
        q2, k2, v2 = (_rows(t, torch.int8, H, "attention " + n) for t, n in ((q, "q"), (k, "k"), (v, "v")))
        starts = tokens.starts
        if int(starts[-1]) != q2.shape[0] or k2.shape != q2.shape or v2.shape != q2.shape:
            raise ValueError(f"native attention: sequence starts {starts.tolist()[-3:]} do not match {q2.shape[0]} tokens")
        if not (_ld(q2) == _ld(k2) == _ld(v2)):  # the kernel takes one leading dimension for q, k and v
            q2, k2, v2 = q2.contiguous(), k2.contiguous(), v2.contiguous()
        out = torch.empty(q2.shape, dtype=torch.int8)
        _native.attention(_ptr(q2), _ptr(k2), _ptr(v2), _ld(q2), _ptr(starts.contiguous()), starts.numel() - 1, heads,
                          H // heads, self._softmax(sm), self._rq(rq, H), _ptr(out), H)
        return out.view(q.shape)

    def embed(self, emb, input_ids, token_type_ids, position_ids):
        if emb.out.bits > 8:
            return super().embed(emb, input_ids, token_type_ids, position_ids)
        self._threads()
        H = emb.word.shape[1]
        ids = [t.reshape(-1).to(torch.int64).contiguous() for t in (input_ids, token_type_ids, position_ids)]
        for t, table, what in zip(ids, (emb.word, emb.token_type, emb.position), ("input", "token type", "position")):
            # The kernel reads table rows by these ids: out of range would read outside the table.
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= table.shape[0]):
                raise ValueError(f"{what} ids must lie in [0, {table.shape[0] - 1}], got {int(t.min())}..{int(t.max())}")
        out = torch.empty(ids[0].numel(), H, dtype=torch.int8)
        _native.embed(_ptr(emb.word), _ptr(emb.token_type), _ptr(emb.position), *(_ptr(t) for t in ids), ids[0].numel(),
                      H, self._add(emb.add_token_type, H), self._add(emb.add_position, H), self._ln(emb.ln, H),
                      self._rq(emb.out, H), _ptr(out), H)
        return out.view(*input_ids.shape, H)

    # -- primitives with a native kernel (the rest: the reference's torch ops) -------------------------
    def linear(self, x, lin):
        self._threads()
        N, K = lin.weight.shape
        x2 = _rows(x, torch.int8, K, "linear input")
        out = torch.empty(x2.shape[0], N, dtype=torch.int32)
        _native.linear_i32(self._packed(lin), _ptr(x2), x2.shape[0], _ld(x2), _ptr(out), N)
        return (out + lin.bias).view(*x.shape[:-1], N)

    def requantize(self, q, rq):
        """int8 / int32 -> int8 (the attention context; the int8 -> int8 pre-FFN requantization)."""
        if q.dtype not in (torch.int8, torch.int32) or rq.bits > 8 or q.dim() == 0:
            return super().requantize(q, rq)
        self._threads()
        C = q.shape[-1]
        q2 = q.reshape(-1, C).to(torch.int32).contiguous()
        out = torch.empty(q2.shape, dtype=torch.int8)
        _native.requant_i32(_ptr(q2), C, q2.shape[0], C, self._rq(rq, C), _ptr(out), C)
        return out.view(q.shape)
