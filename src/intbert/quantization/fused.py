"""Fused twins of the integer functions: ``torch.compile`` of the definitions in ``intops``.

The simulation runs long chains of elementwise int64 ops (a requantization is 4 passes, i-GELU 11),
and eager PyTorch makes a memory pass per op; compiled, each chain is one vectorised loop (6-9x
faster measured on a 2-core AVX2 CPU). The compiled function is the same Python definition, so it
is bit-identical by construction; tests/test_ibert_fused.py checks it with torch.equal.

Small tensors (fewer than MIN_NUMEL elements, e.g. the tiny models of the tests) run eagerly: there
compilation would cost more than it saves. ``INTBERT_COMPILE=0`` (or ``set_enabled(False)``) turns
compilation off; if it fails (no C++ compiler), a warning is logged once and the eager definitions
are used from then on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os

import torch

from . import intops

logger = logging.getLogger(__name__)

MIN_NUMEL = 1 << 16
#: Distinct static arguments (bit widths, ranks, per-channel vs per-tensor) each compile a variant;
#: the default limit of 8 per function would silently fall back to eager after that.
RECOMPILE_LIMIT = 64

_state = {"enabled": os.environ.get("INTBERT_COMPILE", "1") != "0", "failed": False}
_compiled: dict[tuple, object] = {}


def set_enabled(enabled: bool) -> None:
    """Turn the compiled twins on or off (the eager definitions are always correct, only slower)."""
    _state["enabled"] = bool(enabled)


def is_enabled() -> bool:
    return _state["enabled"] and not _state["failed"]


_STATIC = (int, float, bool, type(None))


def _closure(fn, names: tuple[str, ...], static: dict):
    """fn with its Python-number arguments fixed, called positionally with the remaining tensors in order."""

    def bound(*tensors):
        it = iter(tensors)
        return fn(*[static[n] if n in static else next(it) for n in names])

    # Dynamo keeps one cache (and one recompile budget) per code object; a fresh code object per variant
    # keeps each variant's guards short instead of queueing every variant of every twin behind one code.
    bound.__code__ = bound.__code__.replace(co_name=f"{fn.__name__}_{len(_compiled)}")
    return bound


def twin(fn):
    """A compiled twin of the integer function ``fn`` (a composition of ``intops`` definitions)."""
    name = fn.__name__
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(q: torch.Tensor, *args, **kwargs):
        if not (is_enabled() and q.numel() >= MIN_NUMEL):
            return fn(q, *args, **kwargs)
        bound = signature.bind(q, *args, **kwargs)
        bound.apply_defaults()
        # Python numbers (bit widths) are constants of a closure, one compiled variant each, so dynamic=True
        # does not turn them into symbolic values. The clamp of requantize is not compiled at all (only
        # ``rescale`` is): under torch 2.13 the compiled 32-bit clamp returned -2^31-1 for every element.
        # tests/test_ibert_fused.py compares every twin with its definition, 32 bits included.
        static = tuple((k, v) for k, v in bound.arguments.items() if isinstance(v, _STATIC))
        tensors = {k: v for k, v in bound.arguments.items() if not isinstance(v, _STATIC)}
        key = (name, static)
        compiled = _compiled.get(key)
        if compiled is None:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
            compiled = _compiled[key] = torch.compile(_closure(fn, tuple(bound.arguments), dict(static)), dynamic=True)
        try:
            return compiled(*tensors.values())
        except Exception as err:  # a missing compiler or an inductor failure: the eager definition still holds
            _state["failed"] = True
            logger.warning("intbert: torch.compile of %s failed (%s); using eager integer ops", name, err)
            return fn(q, *args, **kwargs)

    call.__doc__ = f"Compiled twin of intops.{name} (bit-identical).\n\n{fn.__doc__}"
    return call


rescale = twin(intops.rescale)
int_gelu = twin(intops.int_gelu)
int_softmax = twin(intops.int_softmax)
int_layernorm = twin(intops.int_layernorm)
