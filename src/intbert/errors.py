"""Exceptions that name the user's fix."""


class UncalibratedError(RuntimeError):
    """A range that only calibration sets was needed before it was set: the one error of both families.

    I-BERT: a quant-mode model ran in eval mode with ``QuantAct`` ranges never calibrated. The transformers
    port silently returns garbage here (every range is +-1e-5, so everything saturates); this is the root of
    most "bad accuracy in quant mode" reports. QDQBERT: a ``TensorQuantizer`` has no amax (or is still
    collecting) where an export or a helper (``fuse_qkv``, ``clip_gelu``, ``recompute_amax``) needs one.
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
