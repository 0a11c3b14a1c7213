"""Builders of engine constant modules with adversarial values, shared by the backend tests."""

from __future__ import annotations

import torch

from intbert.engine.modules import IntLinear, LayerNormConstants, Requant

from _sizes import randint


def requant(seed, channels, bits, input_bits, e_range=(20, 40)):
    m = randint(seed, 2**30, 2**31, (channels,))
    e = randint(seed + 1, *e_range, (channels,))
    return Requant(m, e, torch.ones(channels), bits, input_bits)


def linear(seed, n, k, weight_bit=8):
    hi = 2 ** (weight_bit - 1) - 1
    w = randint(seed, -hi, hi + 1, (n, k))
    w[0] = hi  # a row at the range edge
    return IntLinear(w, randint(seed + 1, -(2**20), 2**20, (n,)), weight_bit)


def int8(seed, *shape):
    x = randint(seed, -128, 128, shape)
    edges = torch.tensor([-128, 127, -128, 127, 0, -1, 1])
    n = min(7, x.numel())
    x.view(-1)[:n] = edges[:n]
    return x.to(torch.int8)


def layernorm(seed, c):
    return LayerNormConstants(torch.tensor(2), torch.where(randint(seed, 0, 2, (c,)) == 0, -1, 1),
                              randint(seed + 1, -(2**29), 2**29, (c,)))
