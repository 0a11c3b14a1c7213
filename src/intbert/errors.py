"""Exceptions that name the user's fix."""


class UncalibratedError(RuntimeError):
    """A quantized model ran in eval mode before its activation ranges were set.

    The transformers port silently returns garbage here (every range is +-1e-5, so everything
    saturates); this is the root of most "bad accuracy in quant mode" reports.
    """


class OverflowRiskError(ValueError):
    """A configuration whose integers could exceed their declared width."""


class MissingWeightsError(ValueError):
    """A checkpoint lacks encoder weights the model needs: loading it would run on random numbers.

    transformers initialises every missing weight and only logs a report (which a quiet logger hides);
    a quantized model built on that is wrong in a way no one can see from its outputs.
    """


class CheckpointIntegrityError(ValueError):
    """A saved integer model whose files do not match their checksum, or whose constants break the bounds
    the integer kernels rely on: edited, mixed from two saves, or damaged. Freeze and save it again."""
