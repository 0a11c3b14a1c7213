"""Exceptions that name the user's fix."""


class UncalibratedError(RuntimeError):
    """A quantized model ran in eval mode before its activation ranges were set.

    The transformers port silently returns garbage here (every range is +-1e-5, so everything
    saturates); this is the root of most "bad accuracy in quant mode" reports.
    """


class OverflowRiskError(ValueError):
    """A configuration whose integers could exceed their declared width."""
