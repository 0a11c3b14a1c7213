"""I-BERT configuration: the transformers port's fields and defaults, validated."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

FORCE_DEQUANT_CHOICES = ("none", "gelu", "softmax", "layernorm", "nonlinear")
# i-GELU approximates the exact (erf) GELU; other activations have no integer kernel.
SUPPORTED_ACTIVATIONS = ("gelu",)
SUPPORTED_POSITION_EMBEDDINGS = ("absolute",)


@strict
class IBertConfig(PreTrainedConfig):
    """Configuration of I-BERT (integer-only RoBERTa).

    Same fields and defaults as ``transformers.IBertConfig`` (so its config.json files load), plus
    validation: a bad ``force_dequant``, ``hidden_act`` or ``position_embedding_type``, or a hidden
    size that the heads do not divide, raises ValueError naming the field.

    quant_mode: run the integer (simulated) path; needs calibration (``intbert.calibrate``).
    force_dequant: "none" | "gelu" | "softmax" | "layernorm" | "nonlinear" (all three): run those
        non-linear functions in float while the rest stays integer.
    weight_bit: bits of the encoder's linear weights, 2..8 (default 8, as the reference).
    smoothing: None, or the record ``intbert.smooth`` wrote (the alpha chosen per site); a smoothed model has
        per-channel ``smooth_scale`` buffers, so its checkpoint loads them.
    """

    model_type = "ibert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    position_embedding_type: str = "absolute"
    quant_mode: bool = False
    force_dequant: str = "none"
    tie_word_embeddings: bool = True
    #: Bits of the encoder's linear weights (the reference hard-codes 8). 7-bit weights let AVX2 CPUs
    #: without VNNI use their fast u8 x s8 integer GEMM exactly (no int16 saturation), see docs/engine.md.
    weight_bit: int = 8
    #: intbert.smooth's record (None: not smoothed). Its presence adds the ``smooth_scale`` buffers.
    smoothing: dict | None = None

    def __post_init__(self, **kwargs):
        # Checked here rather than in a @strict ``validate_*`` hook, which wraps the ValueError in a
        # StrictDataclassClassValidationError that is not a ValueError.
        self._check_ibert_fields()
        super().__post_init__(**kwargs)

    def _check_ibert_fields(self):
        if self.force_dequant not in FORCE_DEQUANT_CHOICES:
            raise ValueError(f"force_dequant must be one of {FORCE_DEQUANT_CHOICES}, got {self.force_dequant!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act must be 'gelu' for I-BERT (the integer i-GELU), got {self.hidden_act!r}")
        if self.position_embedding_type not in SUPPORTED_POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding_type must be 'absolute' for I-BERT, got {self.position_embedding_type!r}"
            )
        if not 2 <= self.weight_bit <= 8:
            raise ValueError(f"weight_bit must lie in 2..8 (int8 weights), got {self.weight_bit}")


__all__ = ["IBertConfig"]
