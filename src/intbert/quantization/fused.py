"""Fused twins of the integer functions: ``torch.compile`` of the definitions in ``intops``.

The simulation runs long chains of elementwise int64 ops (a requantization is 4 passes, i-GELU 11),
and eager PyTorch makes a memory pass per op; compiled, each chain is one vectorised loop (6-9x
faster measured on a 2-core AVX2 CPU). The compiled function is the same Python definition, so it
is bit-identical by construction; tests/test_ibert_fused.py checks it with torch.equal.

Small tensors (fewer than MIN_NUMEL elements, e.g. the tiny models of the tests) run eagerly: there
compilation would cost more than it saves. ``INTBERT_COMPILE=0`` (or ``set_enabled(False)``) turns
compilation off. If compiling fails (no C++ compiler, an inductor error), a RuntimeWarning naming the
error is raised once and the eager definitions are used from then on: the same integers, several
times slower. ``INTBERT_COMPILE_STRICT=1`` (or ``set_strict(True)``; the test suite sets it) raises
:class:`CompiledTwinError` instead, so a twin that does not compile fails its test rather than
comparing the eager definition with itself; :func:`compiled_calls` counts the calls that really ran
compiled code, for tests to assert that the compiled path was taken.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings

import torch

from . import intops

MIN_NUMEL = 1 << 16
#: Distinct static arguments (bit widths, ranks, per-channel vs per-tensor) each compile a variant;
#: the default limit of 8 per function would silently fall back to eager after that.
RECOMPILE_LIMIT = 64

_state = {"enabled": os.environ.get("INTBERT_COMPILE", "1") != "0", "failed": False,
          "strict": os.environ.get("INTBERT_COMPILE_STRICT", "0") == "1", "compiled_calls": 0}
_compiled: dict[tuple, object] = {}


class CompiledTwinError(RuntimeError):
    """A compiled twin failed to compile or run while strict (``INTBERT_COMPILE_STRICT=1``, ``set_strict``)."""


def set_enabled(enabled: bool) -> None:
    """Turn the compiled twins on or off (the eager definitions are always correct, only slower)."""
    _state["enabled"] = bool(enabled)


def is_enabled() -> bool:
    return _state["enabled"] and not _state["failed"]


def set_strict(strict: bool) -> None:
    """Strict: a twin that fails to compile raises :class:`CompiledTwinError` instead of warning and running
    eagerly (for tests, where a silent fallback would compare the eager definition with itself)."""
    _state["strict"] = bool(strict)


def is_strict() -> bool:
    return _state["strict"]


def compiled_calls() -> int:
    """How many twin calls in this process returned from compiled code (not from the eager fallback)."""
    return _state["compiled_calls"]


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
        # Python numbers (bit widths) are fixed in a closure, one compiled variant per distinct tuple of them. Under
        # dynamic=True Dynamo still traces them as symbolic integers, and inductor's C++ computes quant_bounds'
        # 2^(bits-1) as ``1 << (bits - 1)`` on a 32-bit int: for bits >= 32 it wraps, and a compiled
        # requantize(num_bits=32) returned -2^31-1 for every element (torch 2.13, measured). So no twin clamps to
        # more than 31 bits: the simulation compiles ``rescale`` alone and its callers clamp eagerly
        # (models/ibert/quant_modules.py), while the engine's chains (engine/backends/fused_ops.py) compile
        # requantize's clamp to 8-bit outputs and the residual's to 16/22 bits, and its compiled ``requantize``
        # sends wider outputs to the reference backend (engine/backends/compiled.py). tests/test_ibert_fused.py
        # and tests/test_engine_backends.py compare every compiled twin and chain with its definition.
        static = tuple((k, v) for k, v in bound.arguments.items() if isinstance(v, _STATIC))
        tensors = {k: v for k, v in bound.arguments.items() if not isinstance(v, _STATIC)}
        key = (name, static)
        try:
            compiled = _compiled.get(key)
            if compiled is None:
                torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
                compiled = _compiled[key] = torch.compile(_closure(fn, tuple(bound.arguments), dict(static)),
                                                          dynamic=True)
            out = compiled(*tensors.values())
        except Exception as err:  # a missing compiler or an inductor failure: the eager definition still holds
            if _state["strict"]:
                raise CompiledTwinError(f"torch.compile of intbert's {name} twin failed "
                                        f"({type(err).__name__}: {err})") from err
            _state["failed"] = True
            warnings.warn(f"intbert: torch.compile of {name} failed ({type(err).__name__}: {err}); the integer ops "
                          "run eagerly from now on (the same integers, several times slower). Set INTBERT_COMPILE=0 "
                          "to choose the eager ops without this warning.", RuntimeWarning, stacklevel=2)
            return fn(q, *args, **kwargs)
        _state["compiled_calls"] += 1
        return out

    call.__doc__ = f"Compiled twin of intops.{name} (bit-identical).\n\n{fn.__doc__}"
    return call


rescale = twin(intops.rescale)
int_gelu = twin(intops.int_gelu)
int_softmax = twin(intops.int_softmax)
int_layernorm = twin(intops.int_layernorm)
