"""``intbert.distill``: quantization-aware training by distillation from the float model (QAT-KD), for both families.

After post-training calibration, the quantized model (the student) is trained to reproduce the float model (the
teacher) on unlabelled text: no task labels are needed, so any text of the target domain works. The loss is

    hidden_weight * mean over layers of MSE(h_student, h_teacher)      (real tokens only; every layer's output)
  + logit_weight  * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))     (when both models have logits)
  + label_weight  * cross-entropy(z_student, labels)                  (when the batches carry labels)

This is the recipe that keeps int8 residual adds accurate in the literature (Bondarenko et al. 2021's W8A8 QAT;
FasterTransformer's int8v2 QAT-KD checkpoints), and it is cheap for a 22M-parameter encoder.

What trains and what stays: the weights and biases train (straight-through gradients through every quantizer and
integer op). The activation ranges stay as calibrated: QDQBERT's amax values, I-BERT's QuantAct ranges and
LayerNorm shifts (their modules run in eval mode, so I-BERT's EMA range update is off; ``freeze_ranges=False`` lets
it run, as the reference QAT does). Weight ranges follow the weights: I-BERT requantizes its weights per row at every
step anyway, and QDQBERT's weight amax is set to the per-row max again after every step (``recalibrate_weights``).
Dropout is off: the student should match the teacher, not a noisy copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models.ibert.quant_modules import IntLayerNorm, QuantAct
from .quantization.tensor_quantizer import TensorQuantizer
from .quantization.workflow import recalibrate_weights

__all__ = ["distill"]

_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _hidden_loss(student_states, teacher_states, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over layers of the per-element MSE on real tokens (the last ``len(student)`` teacher layers are matched,
    so a student without the embedding output in its tuple still lines up)."""
    teacher_states = teacher_states[-len(student_states):]
    losses = []
    for s, t in zip(student_states, teacher_states):
        diff = (s.float() - t.float()) ** 2
        if mask is not None:
            keep = mask.bool()
            diff = diff[keep]
        losses.append(diff.mean())
    return torch.stack(losses).mean()


def _student_mode(model: nn.Module, freeze_ranges: bool) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout) or (freeze_ranges and isinstance(m, (QuantAct, IntLayerNorm))):
            m.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[dict],
    *,
    epochs: float = 1.0,
    lr: float = 1e-5,
    hidden_weight: float = 1.0,
    logit_weight: float = 1.0,
    label_weight: float = 0.0,
    temperature: float = 2.0,
    warmup: float = 0.1,
    weight_decay: float = 0.0,
    freeze_ranges: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Train the calibrated quantized ``student`` to reproduce the float ``teacher`` on ``batches``, in place.

    ``batches``: a list of dicts of model inputs (``input_ids``, ``attention_mask``, optional ``token_type_ids``
    and ``labels``), visited in a seeded random order for ``epochs`` passes (a fraction stops early). AdamW with a
    linear warm-up over ``warmup`` of the steps and a linear decay to 0. Both models must return hidden states
    (``output_hidden_states``) of the same width. Returns ``{"steps", "loss_first", "loss_last"}`` (the mean
    loss of the first and last tenth of the steps). The student is left in eval mode.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("distill got no batches; pass a list of tokenized batches of domain text")
    if epochs <= 0 or lr <= 0 or temperature <= 0:
        raise ValueError(f"epochs, lr and temperature must be > 0, got {epochs}, {lr}, {temperature}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {warmup}")
    steps = max(1, math.ceil(epochs * len(batches)))
    device = next(student.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(batches), generator=generator)
                       for _ in range(math.ceil(steps / len(batches)))])[:steps].tolist()

    # QDQBERT's weight ranges follow the weights: max |W| per row again after every step (a fixed, detached amax;
    # a dynamic one would pass the amax gradient on to each row's largest weight).
    follow_weights = any(isinstance(m, TensorQuantizer) and n.endswith("_weight_quantizer") and m.amax is not None
                         for n, m in student.named_modules())
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (i + 1) / warm if i < warm else max(0.0, (steps - i) / max(1, steps - warm)))
    teacher.eval()
    _student_mode(student, freeze_ranges)
    losses = []
    try:
        for index in tqdm(order, desc="distilling", disable=not progress):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batches[index].items()}
            inputs = {k: v for k, v in batch.items() if k in _MODEL_KEYS}
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=True)
            s_out = student(**inputs, output_hidden_states=True)
            loss = hidden_weight * _hidden_loss(s_out.hidden_states, t_out.hidden_states,
                                                inputs.get("attention_mask"))
            s_logits, t_logits = getattr(s_out, "logits", None), getattr(t_out, "logits", None)
            if logit_weight and s_logits is not None and t_logits is not None:
                kl = F.kl_div(F.log_softmax(s_logits.float() / temperature, -1),
                              F.log_softmax(t_logits.float() / temperature, -1), log_target=True,
                              reduction="batchmean")
                loss = loss + logit_weight * temperature**2 * kl
            if label_weight and "labels" in batch and s_logits is not None:
                loss = loss + label_weight * F.cross_entropy(s_logits.float(), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            if follow_weights:
                recalibrate_weights(student)
            losses.append(float(loss.detach()))
    finally:
        student.eval()
    tenth = max(1, len(losses) // 10)
    return {"steps": len(losses), "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth}
