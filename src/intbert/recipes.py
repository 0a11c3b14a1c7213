"""Named post-training quantization recipes: where the quantizers sit, whether outliers are smoothed, the ranges.

One call quantizes a freshly loaded QDQBERT or I-BERT model by name::

    model = QDQBertModel.from_pretrained(path)            # or bert_to_ibert(path, quant_mode=True)
    record = intbert.apply_recipe(model, batches)         # the family's best recipe; or recipe="reference", ...

The accuracy and speed of each on all-MiniLM-L6-v2 are in benchmarks/RESULTS.md ("Recipes"), measured by
benchmarks/recipes.py; docs/qdqbert.md and docs/ibert.md say when to pick which.

QDQBERT (fake quantization, exported as a Q/DQ graph; every recipe keeps every GEMM input and weight in int8):

* ``reference``: Wu et al. 2020's placement, also both inputs of every residual add in int8 (what an engine with
  int8 residual I/O, TensorRT's ``-iln`` or FasterTransformer's int8v2, needs for its speed).
* ``float-skip``: the residual adds in float (what FasterTransformer's accurate mode, ModelOpt, Optimum and
  SmoothQuant do), and the FFN's second GEMM input range capped at 10 (the paper's GELU10).
* ``smooth``: the reference placement after ``intbert.smooth`` (both residual-add inputs smoothed too).
* ``smooth-float-skip``: residual adds in float after ``intbert.smooth``: the most accurate, and the default.

I-BERT (integer-only; every activation between GEMMs, the skip inputs included, is 8-bit):

* ``reference``: the paper's model, ranges by quantization MSE.
* ``smooth``: ``intbert.smooth`` first: the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from torch import nn

from .calibration import calibrate
from .models.qdqbert.helpers import clip_gelu
from .models.smoothing import model_family, smooth
from .quantization.workflow import disable_quantizers

__all__ = ["DEFAULT_RECIPES", "RECIPES", "Recipe", "apply_recipe", "get_recipe"]

#: Version of the record apply_recipe returns (for the quantization report).
RECORD_VERSION = 1
#: QDQBERT's residual-add quantizers (both addends of both adds of every layer).
RESIDUAL_ADD_QUANTIZERS = r"\.add_(local|residual)_input_quantizer$"


@dataclass(frozen=True)
class Recipe:
    """A named post-training recipe.

    family: "qdqbert" or "ibert".
    residual_adds: QDQBERT only: keep both residual-add inputs quantized (False: the adds run in float).
    smooth: run ``intbert.smooth`` (alpha searched per site) before calibrating.
    method: the calibration method (``intbert.calibrate``'s names for the family).
    clip_gelu: QDQBERT only: cap the amax of the quantizer reading GELU output (None: no cap).
    summary: one line for listings and reports.
    """

    name: str
    family: str
    residual_adds: bool = True
    smooth: bool = False
    method: str = "max"
    clip_gelu: float | None = None
    summary: str = ""

    def __post_init__(self):
        if self.family not in ("qdqbert", "ibert"):
            raise ValueError(f"Recipe.family must be 'qdqbert' or 'ibert', got {self.family!r}")
        if self.family == "ibert" and (not self.residual_adds or self.clip_gelu is not None):
            raise ValueError(f"recipe {self.name!r}: I-BERT is integer-only; residual_adds and clip_gelu are QDQBERT's")
        if self.smooth and self.clip_gelu is not None:
            raise ValueError(f"recipe {self.name!r}: smoothing rescales the GELU output per channel, so a fixed cap "
                             "would clip different values in each channel; use one or the other")


RECIPES: dict[tuple[str, str], Recipe] = {
    (r.family, r.name): r
    for r in (
        Recipe("reference", "qdqbert", residual_adds=True, method="mse",
               summary="Wu et al. 2020: every GEMM, both attention matmuls and both residual-add inputs in int8"),
        Recipe("float-skip", "qdqbert", residual_adds=False, method="max", clip_gelu=10.0,
               summary="every GEMM and both attention matmuls in int8; residual adds in float; GELU10"),
        Recipe("smooth", "qdqbert", residual_adds=True, smooth=True, method="mse",
               summary="the reference placement (residual adds in int8 too) after intbert.smooth"),
        Recipe("smooth-float-skip", "qdqbert", residual_adds=False, smooth=True, method="max",
               summary="every GEMM and both attention matmuls in int8 after intbert.smooth; residual adds in float"),
        Recipe("reference", "ibert", method="mse",
               summary="Kim et al. 2021: integer-only, every activation 8-bit, ranges by quantization MSE"),
        Recipe("smooth", "ibert", smooth=True, method="mse",
               summary="integer-only after intbert.smooth (LayerNorm and GELU outputs smoothed)"),
    )
}
#: What apply_recipe uses when no recipe is named: the most accurate one of each family on all-MiniLM-L6-v2.
DEFAULT_RECIPES = {"qdqbert": "smooth-float-skip", "ibert": "smooth"}


def get_recipe(family: str, name: str | None = None) -> Recipe:
    """The recipe ``name`` of ``family`` (None: the family's default); a KeyError lists the names there are."""
    name = DEFAULT_RECIPES.get(family) if name is None else name
    recipe = RECIPES.get((family, name))
    if recipe is None:
        names = sorted(n for f, n in RECIPES if f == family)
        raise KeyError(f"no {family} recipe named {name!r}; choose one of {names}")
    return recipe


def apply_recipe(
    model: nn.Module,
    batches: Iterable,
    recipe: str | Recipe | None = None,
    *,
    method: str | None = None,
    percentile: float = 99.99,
    calibrate_model: bool = True,
    forward_fn: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Quantize a freshly loaded (uncalibrated) QDQBERT or I-BERT model by a named recipe, in place.

    ``batches`` (a list: it is read twice when the recipe smooths) are calibration inputs; ``recipe`` a name of the
    model's family, a `Recipe`, or None for the family's default (`DEFAULT_RECIPES`); ``method`` overrides the
    recipe's calibration method (``percentile`` goes with QDQBERT's "percentile"). ``calibrate_model=False`` stops
    after the placement and the smoothing, for a caller that calibrates its own way (e.g. trying several methods); it
    must then apply ``recipe.clip_gelu`` itself (``intbert.models.qdqbert.clip_gelu``) after calibrating. Returns the
    record for the quantization report: the recipe, the method used (None when not calibrated here) and, when it
    smoothed, ``intbert.smooth``'s record (alpha and error per site).
    """
    family = model_family(model, "apply_recipe")
    chosen = recipe if isinstance(recipe, Recipe) else get_recipe(family, recipe)
    if chosen.family != family:
        raise ValueError(f"recipe {chosen.name!r} is for {chosen.family}, the model is {family}")
    batches = list(batches)
    if family == "qdqbert" and not chosen.residual_adds:
        disable_quantizers(model, RESIDUAL_ADD_QUANTIZERS)
        # Recorded in the config, so that the saved checkpoint loads with them off (it holds no amax for them).
        patterns = list(model.config.disabled_quantizers or [])
        if RESIDUAL_ADD_QUANTIZERS not in patterns:
            patterns.append(RESIDUAL_ADD_QUANTIZERS)
        model.config.disabled_quantizers = patterns
    record = {"version": RECORD_VERSION, "recipe": asdict(chosen)}
    if chosen.smooth:
        record["smoothing"] = smooth(model, batches, forward_fn=forward_fn, progress=progress).to_dict()
    if not calibrate_model:
        record["method"] = None
        return record
    record["method"] = method or chosen.method
    calibrate(model, batches, record["method"], percentile=percentile, forward_fn=forward_fn, progress=progress)
    if record["method"] == "percentile":
        record["percentile"] = percentile
    if chosen.clip_gelu is not None:
        clip_gelu(model, chosen.clip_gelu)
    return record
