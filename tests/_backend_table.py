"""The table the backend-equality test runs over: every engine backend, and awkward cases for them.

``BACKENDS`` maps a test name to an :class:`Entry`. Each name of ``intbert.engine.backends.REGISTRY`` has
at least one entry (tests/test_engine_backends.py fails otherwise, so registering a backend gets it
tested), and the native backend has one per ISA level (``native@avx2``: its kernels forced to that level),
so every level this CPU runs is compared with the reference. An entry that cannot run here (no GPU, no
onnxruntime, an ISA this CPU lacks, native kernels not built) is skipped with its reason.

``CASES`` are the awkward sizes and layouts each backend meets: head sizes 1 and 15, length 1, lengths
that are no multiple of 8, 16 or 64 (7, 17, 33, 65, 130), batches whose sequences have padding holes
(masked positions inside a sequence, a sequence with no real token), row-strided and fully transposed
(column-major) input views, and 7- and 8-bit weights. Shapes stay small: the test runs every method of
every backend on every case.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from intbert.engine.backends import REGISTRY, resolve_backend

#: The native kernels' ISA levels, lowest first (csrc/kernels.h): one table entry each, skipped where absent.
NATIVE_ISAS = ("scalar", "avx2", "avx512", "amx")


def _runs_anywhere() -> str | None:
    return None


@dataclass(frozen=True)
class Entry:
    """One backend as the test gets it.

    ``make()`` returns a ``Backend``, or a context manager yielding one (entered for the whole test, e.g. to
    force an ISA level or to hold a temporary folder). ``missing()`` returns why it cannot run on this
    machine, or None. ``compiled``: its elementwise kernels are ``quantization.fused`` twins (torch.compile);
    the test then lowers ``fused.MIN_NUMEL`` so that its small tensors take the compiled path, and asserts
    that compiled calls ran.
    """

    make: Callable[[], object]
    device: str = "cpu"
    missing: Callable[[], str | None] = _runs_anywhere
    compiled: bool = False


@contextlib.contextmanager
def open_backend(entry: Entry):
    """Enter ``entry``: yields its backend (set up and torn down around the caller's block)."""
    made = entry.make()
    if isinstance(made, contextlib.AbstractContextManager):
        with made as backend:
            yield backend
    else:
        yield made


def _registered(name: str, device: str = "cpu"):
    return lambda: resolve_backend(name, torch.device(device))


def _native_missing(isa: str) -> Callable[[], str | None]:
    def missing():
        from intbert.engine.backends import native

        if not native.native_available():
            return native.unavailable_reason()
        if isa not in native.available_isas():
            return f"this CPU does not run the {isa} kernels (it runs {native.available_isas()})"
        return None

    return missing


def _native_at(isa: str):
    @contextlib.contextmanager
    def make():
        from intbert.engine.backends import native

        with native.use_isa(isa):
            yield resolve_backend("native", torch.device("cpu"))

    return make


def _needs_onnxruntime() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "needs onnxruntime (pip install 'intbert[onnx]')"


def _needs_cuda() -> str | None:
    return None if torch.cuda.is_available() else "needs a CUDA device"


BACKENDS: dict[str, Entry] = {
    "reference": Entry(_registered("reference")),
    **{f"native@{isa}": Entry(_native_at(isa), missing=_native_missing(isa)) for isa in NATIVE_ISAS},
    "cpu": Entry(_registered("cpu"), missing=_needs_onnxruntime, compiled=True),
    "cuda": Entry(_registered("cuda", "cuda"), device="cuda", missing=_needs_cuda, compiled=True),
    # the exporter's ONNX graph backend, each op run in onnxruntime (an adapter, not a REGISTRY name)
    "onnx": Entry(lambda: importlib.import_module("test_engine_onnx_backend").OnnxRuntimeBackend(),
                  missing=_needs_onnxruntime),
}


def registry_name(table_name: str) -> str:
    """``native@avx2`` -> ``native``: the REGISTRY name an entry stands for."""
    return table_name.split("@")[0]


def unlisted_backends() -> set[str]:
    """REGISTRY names with no entry in BACKENDS (must be empty)."""
    return set(REGISTRY) - {registry_name(n) for n in BACKENDS}


# ---------------------------------------------------------------------------------------------------
# Cases

LAYOUTS = ("contiguous", "strided", "transposed")


@dataclass(frozen=True)
class Case:
    """One batch shape and layout; every backend method runs on tensors of these sizes."""

    name: str
    #: real tokens per sequence (L = the longest; 0: a sequence with no real token, only padding)
    lengths: tuple[int, ...]
    heads: int
    head_size: int
    #: FFN width (the GELU chain's N)
    intermediate: int
    weight_bit: int = 8
    #: how every input tensor is laid out in memory (values unchanged): see :func:`lay_out`
    layout: str = "contiguous"
    #: masked positions inside sequences too (a mask need not be a suffix)
    holes: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"case {self.name}: layout {self.layout!r} is not one of {LAYOUTS}")

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        return max(self.lengths)

    @property
    def hidden(self) -> int:
        return self.heads * self.head_size

    def keep(self, seed: int = 0) -> torch.Tensor:
        """bool (B, L) attention mask: each sequence's real tokens (with holes if the case has them)."""
        keep = torch.arange(self.length)[None, :] < torch.tensor(self.lengths)[:, None]
        if self.holes:
            g = torch.Generator().manual_seed(seed)
            keep &= torch.randint(0, 4, keep.shape, generator=g) > 0  # about one position in four masked
            keep[:, 0] = torch.tensor(self.lengths) > 0  # every non-empty sequence keeps its first token
        return keep


CASES = (
    # a single token, head size 1 (every per-head loop at its smallest; 16 heads: with hidden size 2 the
    # calibrated i-GELU input scale falls below its 2^-20 floor), 8-bit weights
    Case("len1_d1", (1,), heads=16, head_size=1, intermediate=3),
    # head size 15 (no vector width), lengths 7 and 3, 7-bit weights
    Case("len7_d15_w7", (7, 3), heads=3, head_size=15, intermediate=37, weight_bit=7),
    # length 17 with holes, a one-token sequence and an all-padding sequence in the batch
    Case("len17_holes", (17, 1, 0, 9), heads=2, head_size=8, intermediate=40, holes=True),
    # length 33, head size 64 (a full vector row), every input a row-strided view
    Case("len33_d64_strided", (33, 20), heads=1, head_size=64, intermediate=70, layout="strided"),
    # length 65, head size 32 (an AVX2 row of int8), every input column-major (last dimension not unit-stride),
    # 7-bit weights
    Case("len65_d32_transposed_w7", (65, 64, 2), heads=2, head_size=32, intermediate=24, weight_bit=7,
         layout="transposed", holes=True),
    # length 130 (past 2 x 64), head size 12, strided views with holes
    Case("len130_strided_holes", (130, 77), heads=2, head_size=12, intermediate=50, layout="strided", holes=True),
)


def lay_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in another memory layout on ``t``'s device.

    * contiguous: row-major.
    * strided: a view into a larger buffer, every dimension offset by 1 and 3 wider (no row starts where a
      contiguous one would, and the last dimension's start is misaligned).
    * transposed: column-major (every dimension's stride reversed): the last dimension is not unit-stride.
    """
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "strided":
        buffer = t.new_zeros(tuple(s + 3 for s in t.shape))
        view = buffer[tuple(slice(1, 1 + s) for s in t.shape)]
        view.copy_(t)
        return view
    if layout == "transposed":
        reverse = tuple(reversed(range(t.dim())))
        return t.permute(reverse).contiguous().permute(reverse)
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
