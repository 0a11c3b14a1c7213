"""The "mse" range of I-BERT calibration: the candidate range with the least quantization error."""

import torch

from intbert.models.ibert.calibration import MSE_RANGE_FRACTIONS, mse_batch_range


def _mse(x, a, bits=8):
    n = 2 ** (bits - 1) - 1
    s = a / n
    return ((torch.round(x / s).clamp(-n - 1, n) * s - x) ** 2).mean().item()


def test_mse_range_is_the_brute_force_argmin_over_the_candidates():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    x[17] = 40.0  # one outlier: the full range would waste most levels on it
    lo, hi = mse_batch_range(x, 8)
    candidates = [f.item() * x.abs().max().item() for f in MSE_RANGE_FRACTIONS]
    errors = [_mse(x, a) for a in candidates]
    best = candidates[min(range(len(errors)), key=errors.__getitem__)]
    assert torch.equal(lo, -hi) and abs(hi.item() - best) < 1e-5
    assert hi.item() < x.abs().max().item()  # the outlier is clipped
    assert _mse(x, hi.item()) < _mse(x, x.abs().max().item())


def test_mse_range_keeps_the_full_range_of_uniform_data():
    x = torch.linspace(-1, 1, 4001)
    _, hi = mse_batch_range(x, 8)
    assert hi.item() > 0.97  # clipping uniform data only adds error


def test_mse_range_of_an_all_zero_tensor_is_tiny_and_finite():
    _, hi = mse_batch_range(torch.zeros(100), 8)
    assert torch.isfinite(hi).all() and hi.item() <= 1e-8


def test_mse_range_of_a_large_tensor_counts_outliers_a_subsample_would_miss():
    # Above MSE_MAX_SAMPLES the error is measured on a strided subsample plus the largest values: an outlier
    # block off the stride must still stop the range from collapsing onto the small values.
    from intbert.models.ibert import calibration as C

    x = torch.randn(C.MSE_MAX_SAMPLES * 4, generator=torch.Generator().manual_seed(1)) * 0.1
    x[1:400:2] = 30.0  # 200 outliers, none on the stride-4 grid
    _, hi = mse_batch_range(x, 8)
    full = [(a, _mse(x, a)) for a in (f.item() * 30.0 for f in MSE_RANGE_FRACTIONS)]
    best = min(full, key=lambda t: t[1])[0]
    assert abs(hi.item() - best) < 1e-4
