"""Histogram calibration: a histogram of ``|x|``, read as a percentile, an MSE search or a KL search.

Binning convention. Bin ``j`` of width ``w`` holds the values in ``(j*w, (j+1)*w]``; bin 0 also holds 0.
The index of a value is ``ceil(x / w) - 1`` (clamped at 0 for ``x = 0``), computed in float32.
The histogram always covers the data: ``num_bins * w >= max |x|`` holds exactly (checked with
rational arithmetic when the width is chosen), so no value is ever clamped into the last bin.

Exact rebinning. When a batch exceeds the range, the width becomes ``w * 2^k`` (``grow_method="stretch"``,
the bin count stays fixed) or the bin count grows at a fixed width (``"append"``). Stretching is exact:
the old bin ``i`` maps onto the new bin ``i >> k``, and that is the bin its values would have reached if
they had been binned at the new width directly, because

* dividing by a power of two is exact in binary floating point, so ``fl(x / (w 2^k)) = fl(x / w) / 2^k``;
* ``ceil(y / m) = ceil(ceil(y) / m)`` for real ``y`` and integer ``m``, and ``ceil((i + 1) / m) - 1 = i // m``.

A width that is not a power-of-two multiple (upstream keeps the first batch's width and re-histograms
over a range that is not a whole number of the old bins) would split old bins between new ones, and
the counts could no longer be placed exactly. Counts are int64 (upstream's float32 ``histc`` counts
stop counting at 2^24 per bin).

Everything runs on the tensor's device with vectorised torch ops; no method loops over bins in Python.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from ..fake_quant import fake_tensor_quant, quant_bounds
from .base import Calibrator

__all__ = ["HistogramCalibrator", "HISTOGRAM_METHODS"]

HISTOGRAM_METHODS = ("percentile", "mse", "entropy")

# "append" grows the bin count without limit; past this many bins a stretch is the right tool.
_MAX_APPEND_BINS = 1 << 24
# Divergences closer than this (in nats) are the same up to float rounding; see `_entropy`.
_KL_TIE = 1e-12
# Cap on the elements of one (candidates x bins) block in the mse/entropy searches, to bound memory.
_BLOCK_ELEMENTS = 1 << 22


def _covering_width(xmax: float, num_bins: int) -> float:
    """The smallest float32 ``w >= xmax / num_bins``, so that ``num_bins * w >= xmax`` holds exactly."""
    w = torch.tensor(xmax / num_bins, dtype=torch.float32, device="cpu")
    inf = torch.tensor(float("inf"), dtype=torch.float32, device="cpu")
    while Fraction(w.item()) * num_bins < Fraction(xmax):
        w = torch.nextafter(w, inf)  # at most a step or two: xmax / num_bins was rounded once
    if not torch.isfinite(w):
        raise ValueError(f"calibration data max {xmax} is too large for a float32 histogram range")
    return w.item()


def _candidate_bins(num_bins: int, start_bin: int, stride: int) -> torch.Tensor:
    """Candidate clip points, as bin counts ``i`` (amax = ``i * w``): ``start_bin, start_bin + stride, ... <= num_bins``.

    With ``start_bin > num_bins`` (few bins) the only candidate is the whole range.
    """
    if not isinstance(start_bin, int) or start_bin < 0:
        raise ValueError(f"start_bin must be an int >= 0, got {start_bin!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    first = max(start_bin, 1)
    if first > num_bins:
        return torch.tensor([num_bins], dtype=torch.int64)
    return torch.arange(first, num_bins + 1, stride, dtype=torch.int64)


class HistogramCalibrator(Calibrator):
    """Histogram of ``|x|`` (per tensor) with exact growth; amax by percentile, mse or entropy.

    Args:
        num_bins: bins of the histogram (the resolution of the found amax is ``range / num_bins``).
        grow_method: ``"stretch"`` (double the width as often as needed, keep ``num_bins``) or
            ``"append"`` (keep the width, add bins). Both are exact; see the module docstring.
        skip_zeros: drop exact zeros before binning (padding and ReLU zeros otherwise dominate bin 0).
        torch_hist: accepted for pytorch-quantization compatibility; binning always uses torch.

    Degenerate cases: no data gives ``compute_amax(...) is None``; data that is all zero gives amax 0
    (the quantizer then outputs exact zeros); a single bin gives amax = its right edge.
    """

    def __init__(
        self,
        num_bits: int = 8,
        axis: int | tuple[int, ...] | None = None,
        unsigned: bool = False,
        num_bins: int = 2048,
        grow_method: str = "stretch",
        skip_zeros: bool = False,
        torch_hist: bool = True,
    ) -> None:
        super().__init__(num_bits, axis, unsigned)
        if axis is not None:
            raise NotImplementedError(
                f"HistogramCalibrator is per tensor only (got axis={axis!r}); use axis=None, or calib_method='max' "
                "for per-channel quantizers"
            )
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
        if grow_method not in ("stretch", "append"):
            raise ValueError(f"grow_method={grow_method!r} is unknown; use 'stretch' or 'append'")
        self._num_bins = num_bins
        self._grow_method = grow_method
        self._skip_zeros = skip_zeros
        self._torch_hist = torch_hist
        self.reset()

    def reset(self) -> None:
        """Forget every collected batch."""
        self._hist: torch.Tensor | None = None  # int64 counts
        self._width = 0.0  # float32 value; 0 while only zeros have been seen

    @property
    def histogram(self) -> torch.Tensor | None:
        """The int64 bin counts (``None`` before any data)."""
        return self._hist

    @property
    def bin_width(self) -> float:
        return self._width

    @property
    def bin_edges(self) -> torch.Tensor | None:
        """``len(histogram) + 1`` edges ``j * w`` in float64 (bin ``j`` is ``(edge_j, edge_j+1]``)."""
        if self._hist is None:
            return None
        return torch.arange(self._hist.numel() + 1, dtype=torch.float64, device=self._hist.device) * self._width

    def collect(self, x: torch.Tensor) -> None:
        """Add ``|x|`` to the histogram, growing its range exactly when ``max |x|`` exceeds it."""
        x = x.detach().abs().to(torch.float32).flatten()
        if self._skip_zeros:
            x = x[x != 0]
        if x.numel() == 0:
            return
        xmax = x.max().item()  # one sync per batch: growth is decided on the host
        if xmax != xmax or xmax == float("inf"):
            raise ValueError("calibration data contains NaN or inf; check the model's inputs and outputs")
        if self._hist is None:
            self._hist = torch.zeros(self._num_bins, dtype=torch.int64, device=x.device)
        self._grow(xmax)
        if self._width == 0.0:  # only zeros so far: they belong to bin 0 at any width
            self._hist[0] += x.numel()
            return
        n = self._hist.numel()
        # ceil(x / w) - 1: bins are (j*w, (j+1)*w]; 0 -> -1 -> clamped into bin 0. The upper clamp never
        # acts (num_bins * w >= xmax exactly, and float division is monotonic), it only guards indexing.
        # The width is a tensor on x's device on purpose: CUDA divides by a host scalar as x * (1/w),
        # which can land a hair above num_bins and break the covering bound above.
        width = torch.tensor(self._width, dtype=torch.float32, device=x.device)
        idx = (torch.ceil(x / width) - 1).clamp_(0, n - 1).to(torch.int64)
        self._hist += torch.bincount(idx, minlength=n).to(self._hist.device)

    def _grow(self, xmax: float) -> None:
        n = self._hist.numel()
        if xmax == 0.0 or Fraction(xmax) <= Fraction(self._width) * n:
            return
        if self._width == 0.0:  # first positive data; earlier zeros stay in bin 0
            self._width = _covering_width(xmax, n)
            return
        if self._grow_method == "append":
            new_n = -(-Fraction(xmax) // Fraction(self._width))  # ceil, exactly
            if new_n > _MAX_APPEND_BINS:
                raise ValueError(
                    f"grow_method='append' would need {new_n} bins for max {xmax} at width {self._width}; "
                    "use grow_method='stretch'"
                )
            self._hist = torch.cat([self._hist, self._hist.new_zeros(int(new_n) - n)])
            return
        k = 0
        while Fraction(self._width) * (2**k) * n < Fraction(xmax):
            k += 1
        # Old bin i lands in new bin i >> k (module docstring): a merge of 2^k neighbours.
        merged = self._hist.new_zeros(n)
        merged.index_add_(0, torch.arange(n, device=self._hist.device) >> k, self._hist)
        self._hist = merged
        self._width = self._width * 2.0**k  # exact: a power-of-two multiple of a float32

    def compute_amax(
        self, method: str, *, percentile: float = 99.99, start_bin: int = 128, stride: int = 1
    ) -> torch.Tensor | None:
        """amax from the histogram, as a 0-dim float32 tensor on the histogram's device.

        Args:
            method: ``"percentile"``, ``"mse"`` or ``"entropy"`` (see the ``_percentile``, ``_mse`` and
                ``_entropy`` docstrings for the formulas).
            percentile: for ``"percentile"``, in ``(0, 100]``.
            start_bin, stride: for ``"mse"``/``"entropy"``, the candidate clip points are the right
                edges ``i * w`` for ``i = start_bin, start_bin + stride, ...`` up to the last non-empty bin,
                and that bin's right edge itself (so amax never exceeds the data's range by more than a bin).

        Returns ``None`` when nothing was collected, and 0 when all data was zero.
        """
        if method not in HISTOGRAM_METHODS:
            raise ValueError(f"method={method!r} is unknown for a histogram; use one of {HISTOGRAM_METHODS}")
        if method == "percentile" and not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        if self._hist is None:
            return None
        device = self._hist.device
        if self._width == 0.0:
            return torch.tensor(0.0, dtype=torch.float32, device=device)
        if method == "percentile":
            i = self._percentile(percentile)
        else:
            # Candidates end at the data: after a stretch the bins cover up to twice max |x|, and the empty bins
            # past it tie in KL with the last full one, so "ties to the largest" chose an amax no value reaches
            # (510 for data whose max is 256). ``used`` bins hold every value; that range is always a candidate,
            # as the whole histogram is upstream's (whose range ends at the data).
            used = int(torch.nonzero(self._hist).max().item()) + 1
            cands = _candidate_bins(used, start_bin, stride)
            if int(cands[-1]) != used:
                cands = torch.cat([cands, torch.tensor([used], dtype=torch.int64)])
            cands = cands.to(device)
            i = self._mse(cands) if method == "mse" else self._entropy(cands)
        return torch.tensor(i * self._width, dtype=torch.float32, device=device)

    def _percentile(self, percentile: float) -> int:
        """``i`` such that amax = ``i * w`` is the right edge of the first bin where the cumulative count
        reaches ``percentile / 100 * total``: at least that share of ``|x|`` is ``<= amax``.

        (Upstream returns the bin's left edge, which can leave fewer than the asked share inside.)
        """
        cum = self._hist.cumsum(0).to(torch.float64)
        target = torch.tensor([percentile / 100.0 * cum[-1].item()], dtype=torch.float64, device=cum.device)
        j = int(torch.searchsorted(cum, target, side="left").clamp_(max=cum.numel() - 1).item())
        return j + 1

    def _mse(self, cands: torch.Tensor) -> int:
        """The candidate minimising the expected squared quantization error of the histogram.

        Each bin stands for its centre ``c_j = (j + 1/2) w``; for candidate ``A = i w``
        ``err(A) = sum_j h_j (fq(c_j; A) - c_j)^2 / sum_j h_j`` with ``fq`` = `fake_tensor_quant`
        (the same numerics as the quantizer, positive side: exact for unsigned and narrow range, and
        one extra negative level away from exact for the full signed range). Vectorised over all
        candidates at once (in blocks to bound memory). Ties go to the smallest amax.
        """
        h = self._hist.to(torch.float64)
        n = h.numel()
        centers = (torch.arange(n, dtype=torch.float64, device=h.device) + 0.5) * self._width
        c32 = centers.to(torch.float32)
        errors = []
        block = max(1, _BLOCK_ELEMENTS // n)
        for start in range(0, cands.numel(), block):  # loop over candidate blocks, never over bins
            amax = (cands[start : start + block].to(torch.float64) * self._width).to(torch.float32)[:, None]
            fq = fake_tensor_quant(c32.expand(amax.shape[0], n), amax, self.num_bits, self.unsigned)
            errors.append(((fq.to(torch.float64) - centers) ** 2) @ h)
        err = torch.cat(errors) / h.sum()
        return int(cands[int(torch.argmin(err).item())].item())

    def _entropy(self, cands: torch.Tensor) -> int:
        """TensorRT-style KL search: the candidate ``i`` minimising ``KL(P_i || Q_i)``; ties go to the largest ``i``.

        With counts ``h``, total ``T``, ``C_i = sum_{j<i} h_j`` and ``nq = qmax + 1`` levels (128 for int8):

        * ``P_i``: ``h_j / T`` for ``j < i - 1``; the last kept bin also takes the clipped tail,
          ``P_{i-1} = (h_{i-1} + T - C_i) / T``.
        * ``Q_i``: bin ``j < i`` belongs to level ``floor(j nq / i)``; a level with sum ``S_l`` over its
          bins and ``M_l`` non-empty bins gives each non-empty bin ``S_l / (M_l C_i)``; empty bins get 0.
        * ``KL = sum_j P_j log(P_j / Q_j)`` over ``P_j > 0``; it is ``+inf`` when the last bin is empty
          but the tail is not (``P > 0 = Q`` there).

        Vectorised by prefix sums: with ``H`` the cumulative counts and ``HL`` the cumulative
        ``h log h``, ``T * KL = HL_{i-1} - H_{i-1} log T + H_{i-1} log C_i + sum_l S_l log(M_l / S_l)
        - h_{i-1} log(M_L / S_L) + T * P_{i-1} log(P_{i-1} / Q_{i-1})`` (``L`` the level of bin ``i - 1``),
        costing O(nq) per candidate instead of upstream's O(i) Python steps.
        """
        h = self._hist.to(torch.float64)
        device = h.device
        zero = torch.zeros(1, dtype=torch.float64, device=device)
        H = torch.cat([zero, h.cumsum(0)])  # H[k] = sum of h[:k]
        NZ = torch.cat([zero, (h > 0).to(torch.float64).cumsum(0)])
        HL = torch.cat([zero, torch.xlogy(h, h).cumsum(0)])  # 0 log 0 = 0
        total = H[-1]
        _, qmax = quant_bounds(self.num_bits, self.unsigned)
        nq = qmax + 1
        levels = torch.arange(nq + 1, dtype=torch.int64, device=device)
        kl = []
        block = max(1, _BLOCK_ELEMENTS // (nq + 1))
        for start in range(0, cands.numel(), block):  # loop over candidate blocks, never over bins
            i = cands[start : start + block]
            # First bin of level l is ceil(l * i / nq); level nq starts at i (the end).
            bounds = (levels[None, :] * i[:, None] + nq - 1) // nq
            H_at, NZ_at = H.take(bounds), NZ.take(bounds)  # one gather each (take is much faster than [] here)
            S = H_at[:, 1:] - H_at[:, :-1]
            M = NZ_at[:, 1:] - NZ_at[:, :-1]
            level_term = torch.where(S > 0, S * (torch.log(M.clamp(min=1)) - torch.log(S.clamp(min=1e-300))), 0.0).sum(1)
            last = i - 1
            h_last = h[last]
            C = H[i]
            L = (last * nq) // i
            S_L = S.gather(1, L[:, None]).squeeze(1)
            M_L = M.gather(1, L[:, None]).squeeze(1)
            own = torch.where(h_last > 0, h_last * (torch.log(M_L.clamp(min=1)) - torch.log(S_L.clamp(min=1e-300))), 0.0)
            H_prev = H[last]
            body = HL[last] - H_prev * torch.log(total) + H_prev * torch.log(C.clamp(min=1e-300)) + level_term - own
            P_last = (h_last + total - C) / total
            Q_last = S_L / (M_L.clamp(min=1) * C.clamp(min=1e-300))
            tail_term = torch.where(P_last > 0, P_last * (torch.log(P_last.clamp(min=1e-300)) - torch.log(Q_last.clamp(min=1e-300))), 0.0)
            value = body / total + tail_term
            # P > 0 where Q = 0 (empty last bin with a non-empty tail, or nothing below i): divergence is infinite.
            infinite = ((h_last == 0) & (P_last > 0)) | (C == 0)
            kl.append(torch.where(infinite, torch.full_like(value, float("inf")), value))
        kl = torch.cat(kl)
        # Ties go to the largest i (TensorRT keeps the widest of equally good ranges). Divergences within
        # _KL_TIE nats count as ties: the prefix-sum formula sums the same terms in a different order for
        # each candidate, so an exact tie (e.g. candidates past the last non-empty bin) can differ by ~1e-16.
        close = kl <= kl.min() + _KL_TIE
        best = int(torch.nonzero(close).max().item())
        return int(cands[best].item())
