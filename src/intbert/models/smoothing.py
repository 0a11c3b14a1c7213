"""``intbert.smooth``: SmoothQuant-style migration of activation outliers, folded exactly, for both families.

Post-LN BERT (BERT, MiniLM, RoBERTa) has one property that decides the form: every LayerNorm output feeds both the
next GEMMs *and* the skip path of the next residual add. SmoothQuant's ``smooth_ln_fcs`` (divide gamma and beta by
``s``, multiply the next weights' columns by ``s``) is exact only in pre-LN models, where the LayerNorm output feeds
nothing else; here the skip path would carry ``y / s`` into an add, and LayerNorm is not equivariant to a per-channel
scale. So each family keeps the skip path exact with one per-channel factor on the branch that needs it:

Sites (each smoothed tensor, with its own ``s``; see ``intbert.quantization.smoothing`` for the formula and search):

* a **LayerNorm site**: ``embeddings.LayerNorm`` (read by layer 0's query/key/value and its attention skip), each
  ``attention.output.LayerNorm`` (read by ``intermediate.dense`` and the feed-forward skip), and each
  ``output.LayerNorm`` but the last (read by the next layer's query/key/value and attention skip). The last one
  produces the model's output and is left alone. Folded: gamma and beta divided by ``s``, the readers' weight columns
  multiplied by ``s``, and the block that reads it as its skip input gets ``smooth_scale = s``:

  - **QDQBERT** (Outlier Suppression+'s form): that block's ``dense`` rows and bias are divided by ``s`` too, so both
    addends arrive divided by ``s`` and both residual-add quantizers see the smoothed values; the sum is multiplied by
    ``s`` before LayerNorm (one per-channel Mul per block in the exported graph, a pointwise op that TensorRT fuses).
  - **I-BERT**: the residual add runs on 22-bit integers, which hold the outliers; what hurts is the 8-bit
    per-tensor quantization of the LayerNorm output (the GEMM input and the skip input at once). The skip input is
    read at scale ``S * s_c`` instead of ``S``: the same int8 integers, a per-channel dyadic multiplier in the
    residual requantization, so the frozen engine stays integer-only with no new operation.

* an **activation site**: each ``intermediate`` (the GELU output, read by ``output.dense`` only). A GELU absorbs no
  factor, so the output is divided by ``smooth_scale = s`` explicitly (QDQBERT: a Mul by 1/s before the Q/DQ pair;
  I-BERT: another per-channel scale that the 8-bit requantization's per-channel multiplier absorbs) and
  ``output.dense``'s columns are multiplied by ``s``.

The attention output projection's input (the context) is not smoothed: on all-MiniLM-L6-v2 it changes nothing
(benchmarks/RESULTS.md). In float the transform changes the outputs only by rounding (tests: within 1e-5).

Workflow: build the quantized model, choose its placement (e.g. ``disable_quantizers(model, r"\\.add_")``), then
``smooth`` (it reads which quantizers are active to weigh the residual-add errors), then ``calibrate``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..quantization.smoothing import (
    DEFAULT_ALPHAS,
    MAX_SAMPLE_TOKENS,
    ChannelStats,
    SiteChoice,
    SmoothingSite,
    search_alpha,
    site_error,
)
from ..quantization.tensor_quantizer import TensorQuantizer
from .ibert.modeling_ibert import IBertPreTrainedModel
from .ibert.quant_modules import QuantAct
from .qdqbert.modeling_qdqbert import QDQBertPreTrainedModel

__all__ = ["SmoothingReport", "model_family", "smooth", "smoothing_record"]

#: Version of the record stored in ``config.smoothing`` (and the report): bump when its fields change meaning.
RECORD_VERSION = 1
METHOD = "smoothquant"


@dataclass(frozen=True)
class SmoothingReport:
    """What ``smooth`` did: the family, how alpha was chosen (``"search"`` or the fixed value), and per site the
    alpha (None: left unsmoothed) with the site's quantized error before and after (the search objective)."""

    family: str
    alpha: str | float
    alphas: tuple[float, ...]
    sites: tuple[SiteChoice, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """The JSON record, as stored in ``model.config.smoothing`` and meant for the quantization report."""
        return {
            "version": RECORD_VERSION,
            "method": METHOD,
            "family": self.family,
            "alpha": self.alpha,
            "alpha_grid": list(self.alphas) if self.alpha == "search" else None,
            "sites": {c.name: c.to_dict() for c in self.sites},
        }

    def summary(self) -> str:
        """One line per site: alpha and the error before -> after."""
        lines = [f"smoothing ({self.family}, alpha {self.alpha}):"]
        for c in self.sites:
            alpha = "-" if c.alpha is None else f"{c.alpha:.2f}"
            lines.append(f"  {c.name:<48} alpha {alpha:>5}  error {c.error_unsmoothed:.3g} -> {c.error:.3g}")
        return "\n".join(lines)


def smoothing_record(model: nn.Module) -> dict | None:
    """The smoothing record of a model (``config.smoothing``: what ``SmoothingReport.to_dict`` wrote), or None."""
    config = getattr(model, "config", None)
    return None if config is None else getattr(config, "smoothing", None)


# ----------------------------------------------------------------------------------------------------------------------
# Sites: the same module paths in both families (BERT's tree)


@dataclass
class _Site:
    name: str
    kind: str  # "layernorm" | "activation"
    source: nn.Module  # the LayerNorm, or the intermediate module whose output is divided
    readers: list[nn.Module]  # the linears reading the smoothed tensor
    block: nn.Module | None  # the residual block reading it as its skip input (LayerNorm sites)
    stats: ChannelStats
    skips: list[ChannelStats]


def model_family(model: nn.Module, caller: str = "smooth") -> str:
    """"qdqbert" or "ibert"; any other model is a TypeError naming ``caller`` (``smooth``, ``apply_recipe``)."""
    if isinstance(model, QDQBertPreTrainedModel):
        return "qdqbert"
    if isinstance(model, IBertPreTrainedModel):
        return "ibert"
    raise TypeError(f"{caller} takes an intbert QDQBERT or I-BERT model, got {type(model).__name__}")


def _qdq_active(q: TensorQuantizer) -> bool:
    return not q._disabled and q._if_quant


def _plan(base: nn.Module, family: str, max_tokens: int) -> list[_Site]:
    layers = list(base.encoder.layer)
    names = {id(m): n for n, m in base.named_modules()}

    def qkv(layer):
        attention = layer.attention.self
        return [attention.query, attention.key, attention.value]

    def site(kind, source, readers, block):
        return _Site(names[id(source)], kind, source, readers, block, ChannelStats(max_tokens), [])

    sites = [site("layernorm", base.embeddings.LayerNorm, qkv(layers[0]), layers[0].attention.output)]
    for i, layer in enumerate(layers):
        sites.append(site("layernorm", layer.attention.output.LayerNorm, [layer.intermediate.dense], layer.output))
        sites.append(site("activation", layer.intermediate, [layer.output.dense], None))
        if i + 1 < len(layers):
            sites.append(site("layernorm", layer.output.LayerNorm, qkv(layers[i + 1]), layers[i + 1].attention.output))
    return sites


@contextlib.contextmanager
def _float_forward(model: nn.Module, family: str) -> Iterator[None]:
    """The model computing in float (the values the transform must preserve): QDQBERT with every quantizer bypassed,
    I-BERT with quant_mode off on every module. Restored on exit."""
    saved = []
    try:
        for m in model.modules():
            if family == "qdqbert" and isinstance(m, TensorQuantizer):
                saved.append((m, "_disabled", m._disabled))
                m._disabled = True
            elif family == "ibert" and isinstance(getattr(m, "quant_mode", None), bool):
                saved.append((m, "quant_mode", m.quant_mode))
                m.quant_mode = False
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def _run(model: nn.Module, batch, forward_fn: Callable | None, device) -> None:
    if forward_fn is not None:
        forward_fn(model, batch)
    elif isinstance(batch, dict):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    else:
        model(batch.to(device) if isinstance(batch, torch.Tensor) else batch)


def _collect(model: nn.Module, base: nn.Module, sites: list[_Site], family: str, batches: Iterable,
             forward_fn: Callable | None, progress: bool) -> int:
    """One float pass over ``batches``: per-channel max and a token sample of every smoothed tensor (padding left out,
    read from the base model's attention_mask) and of every residual addend quantized in the smoothed domain."""
    keep: dict[str, torch.Tensor | None] = {"mask": None}
    # By name or by position: the base model's forward may take keywords its signature does not list (return_dict
    # goes to the decorator that wraps it), so the call is not bound against the signature.
    params = list(inspect.signature(base.forward).parameters)
    position = params.index("attention_mask") if "attention_mask" in params else None

    def read_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and position is not None and position < len(args):
            mask = args[position]
        keep["mask"] = None if mask is None or mask.dim() != 2 else mask.bool()

    def record(stats: ChannelStats):
        def hook(module, args, output=None):
            x = args[0] if output is None else output
            x = x[0] if isinstance(x, tuple) else x
            mask = keep["mask"]
            stats.add(x, mask if mask is not None and mask.shape == x.shape[:-1] else None)
        return hook

    handles = [base.register_forward_pre_hook(read_mask, with_kwargs=True)]
    for s in sites:
        handles.append(s.readers[0].register_forward_pre_hook(record(s.stats)))
        if s.kind != "layernorm":
            continue
        if family == "ibert":
            s.skips.append(s.stats)  # the 8-bit LayerNorm output is also the skip input
        else:
            if _qdq_active(s.block.add_residual_input_quantizer):
                s.skips.append(s.stats)
            if _qdq_active(s.block.add_local_input_quantizer):
                local = ChannelStats(s.stats.max_rows)
                s.skips.append(local)
                handles.append(s.block.dense.register_forward_hook(record(local)))
    device = next(model.parameters()).device
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _float_forward(model, family):
            for batch in tqdm(batches, desc="smoothing statistics", disable=not progress):
                _run(model, batch, forward_fn, device)
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


# ----------------------------------------------------------------------------------------------------------------------
# Folding


def _scaled(t: torch.Tensor, factor: torch.Tensor, divide: bool) -> torch.Tensor:
    """``t * factor`` (or ``/``) in float64, rounded once to t's dtype."""
    f = factor.to(device=t.device, dtype=torch.float64)
    return (t.double() / f if divide else t.double() * f).to(t.dtype)


@torch.no_grad()
def _fold(site: _Site, s: torch.Tensor, family: str) -> None:
    for linear in site.readers:  # the readers' input columns carry the factor
        linear.weight.copy_(_scaled(linear.weight, s, divide=False))
    if site.kind == "activation":
        site.source.smooth_scale.copy_(s)
        return
    ln, block = site.source, site.block
    ln.weight.copy_(_scaled(ln.weight, s, divide=True))
    ln.bias.copy_(_scaled(ln.bias, s, divide=True))
    if family == "qdqbert":  # both addends divided by s; the block multiplies the sum back
        block.dense.weight.copy_(_scaled(block.dense.weight, s[:, None], divide=True))
        if block.dense.bias is not None:
            block.dense.bias.copy_(_scaled(block.dense.bias, s, divide=True))
    block.smooth_scale.copy_(s)


def _check_smoothable(model: nn.Module, base: nn.Module, family: str) -> None:
    config = model.config
    if getattr(config, "smoothing", None) is not None:
        raise ValueError("this model is already smoothed (config.smoothing is set); smooth the float weights once")
    if getattr(config, "add_cross_attention", False):
        raise ValueError("smooth supports encoders (and decoders without cross-attention): a cross-attention block "
                         "changes which LayerNorm feeds the feed-forward GEMM")
    if family == "qdqbert":
        calibrated = [n for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.amax is not None]
    else:
        calibrated = [n for n, m in model.named_modules() if isinstance(m, QuantAct) and m.is_calibrated()]
    if calibrated:
        raise ValueError(
            f"smooth must run before calibration: {len(calibrated)} quantizer(s) hold ranges measured on unsmoothed "
            f"activations (e.g. {calibrated[0]}); start again from the float weights, smooth, then intbert.calibrate"
        )


def _add_buffers(sites: list[_Site]) -> None:
    """Give every module that multiplies a factor back its ``smooth_scale`` (ones: a no-op until folded)."""
    for s in sites:
        module = s.block if s.kind == "layernorm" else s.source
        if getattr(module, "smooth_scale", None) is None:
            ref = s.readers[0].weight
            module.smooth_scale = torch.ones(ref.shape[1], device=ref.device, dtype=ref.dtype)


def smooth(
    model: nn.Module,
    batches: Iterable,
    alpha: float | None = None,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_tokens: int = MAX_SAMPLE_TOKENS,
    forward_fn: Callable | None = None,
    progress: bool = False,
) -> SmoothingReport:
    """Migrate activation outliers into the weights (SmoothQuant), in place, folded exactly; returns the report.

    ``model``: a QDQBERT or I-BERT model (any head), before calibration, with its quantizer placement already
    chosen. ``batches``: calibration inputs (dicts of model keyword arguments, or tensors of input ids), run once in
    float. ``alpha``: one migration strength for every site, or None (default) to choose it per site from
    ``alphas`` by the quantized error of what the site's readers compute (module docstring of
    ``intbert.quantization.smoothing``). The record (alpha per site) is stored in ``model.config.smoothing``, so a
    saved checkpoint rebuilds the ``smooth_scale`` buffers it needs; calibrate afterwards.

    Raises ValueError for a calibrated or already smoothed model, and TypeError for another kind of model.
    """
    family = model_family(model)
    base = model.base_model
    _check_smoothable(model, base, family)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (or be None to search it per site), got {alpha}")
    sites = _plan(base, family, max_tokens)
    if _collect(model, base, sites, family, batches, forward_fn, progress) == 0:
        raise ValueError("smooth got no batches; pass calibration batches (the same ones calibrate will use)")
    # Every factor from the weights as they are now, before any fold: a QDQBERT LayerNorm site divides its block's
    # dense rows, which are the columns another site's formula reads.
    choices, factors = [], []
    for s in sites:
        gain = None if s.block is None else s.block.LayerNorm.weight.detach().clone()
        site = SmoothingSite(s.name, s.stats, [r.weight for r in s.readers], s.skips, gain)
        if alpha is None:
            choice = search_alpha(site, alphas)
        else:
            base_error, error = site_error(site, site.factor(None)), site_error(site, site.factor(alpha))
            choice = SiteChoice(s.name, alpha, error, base_error, {alpha: error})
        choices.append(choice)
        factors.append(site.factor(choice.alpha))
    report = SmoothingReport(family, "search" if alpha is None else float(alpha), tuple(float(a) for a in alphas),
                             tuple(choices))
    _add_buffers(sites)
    for s, choice, factor in zip(sites, choices, factors):
        if choice.alpha is not None:
            _fold(s, factor, family)
    model.config.smoothing = report.to_dict()
    return report
