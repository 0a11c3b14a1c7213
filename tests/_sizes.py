"""Shared awkward sizes and a seeded generator for the I-BERT op and module tests.

Sizes hit every tail: 1 (a single element), primes around powers of two (7, 17, 33, 127, 129), and
769 (one past BERT's 768). Every random draw in these tests goes through :func:`gen` so a failure
reproduces from its seed.
"""

from __future__ import annotations

import torch

#: Awkward lengths: single element, odd primes either side of powers of two, one past hidden 768.
AWKWARD_SIZES = (1, 7, 17, 33, 127, 129, 769)


def gen(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed (use one per test, a distinct seed per case)."""
    return torch.Generator().manual_seed(seed)


def randint(seed: int, low: int, high: int, shape) -> torch.Tensor:
    """int64 uniform in [low, high) from a seeded generator."""
    return torch.randint(low, high, tuple(shape), generator=gen(seed), dtype=torch.int64)


def randn(seed: int, shape, dtype=torch.float32) -> torch.Tensor:
    """Standard normal from a seeded generator."""
    return torch.randn(tuple(shape), generator=gen(seed), dtype=dtype)
