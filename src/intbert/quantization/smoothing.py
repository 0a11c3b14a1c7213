"""Per-channel migration of activation outliers into the next weights (SmoothQuant): the numerics, model-agnostic.

A GEMM ``Y = X W^T`` is unchanged when column ``j`` of ``X`` is divided by ``s_j`` and column ``j`` of ``W`` is
multiplied by it: ``Y = (X diag(s)^-1) (W diag(s))^T``. With a per-tensor activation quantizer, a few channels of X
that are 100x larger than the rest (MiniLM's residual channel 99) set the step for every channel; dividing them by a
large ``s_j`` shrinks the range, and the weight columns, quantized per output row, absorb the factor. Xiao et al. 2023
(arXiv 2211.10438), eq. 4::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          max|W_j| over every GEMM that reads X

``alpha`` = 0 leaves the activations alone, 1 flattens every activation channel to the same max; the weights then
carry the outliers. Where the factor goes (a LayerNorm's gamma/beta, a previous linear's rows, an explicit per-channel
scale) is the model's business (``intbert.models.*.smoothing``); this module measures the activations, computes ``s``
and chooses ``alpha`` for one *site* (one smoothed tensor and everything that reads it) by the error that 8-bit
quantization leaves in what the site's consumers compute:

* each GEMM: ``|Q(X/s) Q_row(W s)^T - X W^T|^2 / |X W^T|^2``, activations per tensor with the site's calibrated range
  ``amax = max|X/s|``, weights per output row, both symmetric 8-bit with round half to even (`fake_tensor_quant`);
* each tensor that is quantized in the smoothed domain and multiplied back by ``s`` before a residual add (I-BERT's
  8-bit skip input, QDQBERT's residual-add quantizers): ``|g (Q(T/s) s - T)|^2 / |g T|^2``, with ``g`` the gamma of
  the LayerNorm after the add. The add's error reaches that LayerNorm's output scaled by gamma per channel, so a
  factor that coarsens the grid of a channel the LayerNorm then amplifies is charged for it (a planted 40x gamma made
  the unweighted search choose factors that raised the model's error instead of lowering it).

The site's error is the sum of these relative errors (noise-to-signal ratios), measured on a fixed sample of the
calibration tokens; ``alpha`` is the grid value with the smallest error, and ``s = 1`` (no smoothing) is kept when no
grid value beats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .fake_quant import fake_tensor_quant

__all__ = [
    "DEFAULT_ALPHAS",
    "MAX_SAMPLE_TOKENS",
    "ChannelStats",
    "SiteChoice",
    "SmoothingSite",
    "search_alpha",
    "site_error",
    "smoothing_factor",
]

#: The grid searched per site. SmoothQuant's paper uses 0.5 for OPT/BLOOM and up to 0.85-0.9 for Llama-2; NNCF's
#: default is 0.95; on all-MiniLM-L6-v2 the per-site choices land between 0.6 and 0.95 (benchmarks/RESULTS.md).
DEFAULT_ALPHAS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
#: Tokens kept per site for the error estimate (a seeded uniform sample of all calibration tokens); the per-channel
#: max that ``s`` is computed from always covers every token.
MAX_SAMPLE_TOKENS = 1024
#: Factors are clamped to [1/MAX_FACTOR, MAX_FACTOR]: a channel that is all zeros in the data (or a weight column of
#: zeros) would otherwise get s = 0 or inf, which no fold can express.
MAX_FACTOR = 2.0**16
#: A channel whose max |x| is at or below this carries no data; it keeps s = 1.
DEAD_CHANNEL = 1e-8
ACT_BITS = 8
WEIGHT_BITS = 8


class ChannelStats:
    """Per-channel max |x| over the last dim of every tensor ``add``-ed, plus a seeded uniform sample of its rows.

    ``add(x, keep)``: ``x`` is ``(..., C)``; ``keep`` (``x.shape[:-1]``, bool) marks the rows that are real tokens.
    The max covers every row, padding included, because the calibrators that run afterwards see every position too
    and set their range from it (on all-MiniLM-L6-v2 a padded position's hidden state can exceed every real token's
    in some channels: a factor computed from real tokens only left those ranges wide open, mean cosine 0.963 instead of
    0.997). The sample, which measures the error that matters, holds real tokens only. It is a bottom-k sample on
    random keys from a generator seeded at construction, so the same batches always give the same rows.
    """

    def __init__(self, max_rows: int = MAX_SAMPLE_TOKENS, seed: int = 0) -> None:
        if max_rows <= 0:
            raise ValueError(f"max_rows must be > 0, got {max_rows}")
        self.max_rows = max_rows
        self.absmax: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self.count = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        if rows.shape[0] == 0:
            return
        amax = rows.abs().amax(0)
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        if keep is not None:
            rows = rows[keep.reshape(-1).cpu()]
        keys = torch.rand(rows.shape[0], generator=self._generator)
        if self.rows is not None:
            rows, keys = torch.cat([self.rows, rows]), torch.cat([self._keys, keys])
        if rows.shape[0] > self.max_rows:
            index = keys.topk(self.max_rows, largest=False).indices.sort().values
            rows, keys = rows[index], keys[index]
        self.rows, self._keys = rows, keys
        self.count += int(x.shape[0]) if x.dim() else 1

    @property
    def channels(self) -> int:
        if self.absmax is None:
            raise RuntimeError("no data collected: the site never ran during the statistics pass")
        return self.absmax.numel()


def smoothing_factor(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (float32, finite, > 0).

    A channel that carries nothing, in the data (``max|X_j| <= 1e-8``) or in every reader's weights (a zero column),
    gets ``s_j = 1``: there is nothing to balance, and a huge factor would only erase the channel on a skip path that
    reads it. Every factor is clamped to ``[2^-16, 2^16]`` so that folding it into a LayerNorm or a weight stays well
    inside float32.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    x, w = act_absmax.double(), weight_absmax.double()
    live = (x > DEAD_CHANNEL) & (w > DEAD_CHANNEL)
    s = x.clamp(min=DEAD_CHANNEL).pow(alpha) / w.clamp(min=DEAD_CHANNEL).pow(1.0 - alpha)
    s = torch.where(live, s, torch.ones_like(s))
    return s.clamp(1.0 / MAX_FACTOR, MAX_FACTOR).float()


@dataclass
class SmoothingSite:
    """One smoothed tensor X and what reads it.

    ``name``: where the factor is folded (e.g. ``encoder.layer.0.attention.output.LayerNorm``).
    ``stats``: X's per-channel max and token sample.
    ``weights``: the weights ``[out, C]`` of every GEMM that reads X (their columns are multiplied by ``s``).
    ``skips``: tensors quantized in the smoothed domain, ``Q(T/s) s`` (a residual-add input; often X itself).
    ``skip_gain``: the per-channel weight of the skip errors (the gamma of the LayerNorm after the add), or None.
    """

    name: str
    stats: ChannelStats
    weights: Sequence[torch.Tensor]
    skips: Sequence[ChannelStats] = field(default_factory=tuple)
    skip_gain: torch.Tensor | None = None

    def weight_absmax(self) -> torch.Tensor:
        """max |W_j| per input channel over every consumer (SmoothQuant's max over a fused QKV weight)."""
        return torch.stack([w.detach().abs().amax(0).float().cpu() for w in self.weights]).amax(0)

    def exact_outputs(self) -> list[tuple[torch.Tensor, float]]:
        """Each consumer's float output ``X W^T`` on the sample, with its energy (computed once, then cached)."""
        cached = getattr(self, "_exact", None)
        if cached is None:
            x = self.stats.rows
            cached = []
            for w in self.weights:
                y = x @ w.detach().float().cpu().t()
                cached.append((y, float(y.pow(2).sum(dtype=torch.float64))))
            self._exact = cached
        return cached

    def factor(self, alpha: float | None) -> torch.Tensor:
        """The site's ``s`` for ``alpha``; ``None`` means no smoothing (all ones)."""
        if alpha is None:
            return torch.ones(self.stats.channels)
        return smoothing_factor(self.stats.absmax, self.weight_absmax(), alpha)


def _relative_error(approx: torch.Tensor, exact: torch.Tensor, exact_energy: float | None = None) -> float:
    """``|approx - exact|^2 / |exact|^2`` (float32 elementwise, summed in float64)."""
    if exact_energy is None:
        exact_energy = float(exact.pow(2).sum(dtype=torch.float64))
    return float((approx - exact).pow(2).sum(dtype=torch.float64)) / max(exact_energy, 1e-30)


def _per_tensor(x: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    return fake_tensor_quant(x, absmax.max().reshape(()), ACT_BITS)


@torch.no_grad()
def site_error(site: SmoothingSite, s: torch.Tensor) -> float:
    """Sum of the relative squared errors of the site's consumers after 8-bit quantization with factor ``s``."""
    x = site.stats.rows
    if x is None:
        raise RuntimeError(f"{site.name}: no data collected; the site never ran during the statistics pass")
    xq = _per_tensor(x / s, site.stats.absmax / s)
    total = 0.0
    for w, (y, energy) in zip(site.weights, site.exact_outputs()):
        ws = w.detach().float().cpu() * s
        wq = fake_tensor_quant(ws, ws.abs().amax(1, keepdim=True), WEIGHT_BITS)
        total += _relative_error(xq @ wq.t(), y, energy)
    gain = 1.0 if site.skip_gain is None else site.skip_gain.detach().float().cpu().abs()
    for skip in site.skips:
        t = skip.rows
        total += _relative_error(_per_tensor(t / s, skip.absmax / s) * s * gain, t * gain)
    return total


@dataclass(frozen=True)
class SiteChoice:
    """The outcome of the search at one site: ``alpha`` (None: left unsmoothed), the error with the chosen factor,
    the error without smoothing, and every grid value's error."""

    name: str
    alpha: float | None
    error: float
    error_unsmoothed: float
    errors: dict[float, float]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "error": self.error, "error_unsmoothed": self.error_unsmoothed}


def search_alpha(site: SmoothingSite, alphas: Sequence[float] = DEFAULT_ALPHAS) -> SiteChoice:
    """The grid value whose factor gives the site the smallest quantized error (``None`` if none beats ``s = 1``)."""
    if not alphas:
        raise ValueError("alphas is empty; pass at least one value in [0, 1]")
    base = site_error(site, site.factor(None))
    errors = {float(a): site_error(site, site.factor(a)) for a in alphas}
    best = min(errors, key=errors.get)
    if errors[best] >= base:
        return SiteChoice(site.name, None, base, base, errors)
    return SiteChoice(site.name, best, errors[best], base, errors)
