"""The public surface: one calibrate verb for both families, and imports that only point down the layers."""

import ast
from pathlib import Path

import pytest
import torch

import intbert
from intbert.quantization import TensorQuantizer

SRC = Path(intbert.__file__).parent

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=20)


def _ids():
    return torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def test_calibrate_dispatches_to_ibert_and_sets_every_used_range():
    model = intbert.IBertModel(intbert.IBertConfig(quant_mode=True, **TINY)).eval()
    with pytest.raises(intbert.UncalibratedError):
        model(_ids())
    assert intbert.calibrate(model, [{"input_ids": _ids()}]) is model
    model(_ids())  # runs now


def test_calibrate_dispatches_to_qdqbert():
    model = intbert.QDQBertModel(intbert.QDQBertConfig(**TINY)).eval()
    intbert.calibrate(model, [{"input_ids": _ids()}], method="max")
    amax = [m.amax for m in model.modules() if isinstance(m, TensorQuantizer)]
    assert amax and all(a is not None for a in amax)


def test_one_uncalibrated_error_for_both_families():
    """I-BERT's eval forward and QDQBERT's helpers refuse a missing range with the same exception class."""
    from intbert.models.qdqbert import clip_gelu, fuse_qkv

    model = intbert.QDQBertModel(intbert.QDQBertConfig(**TINY))
    with pytest.raises(intbert.UncalibratedError, match="calibrate"):
        fuse_qkv(model)
    with pytest.raises(intbert.UncalibratedError, match="calibrate"):
        clip_gelu(model, 10.0)


def test_calibrate_refuses_a_model_without_quantizers():
    with pytest.raises(ValueError, match="no quantizers"):
        intbert.calibrate(torch.nn.Linear(2, 2), [torch.zeros(1, 2)])


def test_the_converters_weight_copy_refuses_unknown_keys_wrong_shapes_and_uncovered_weights():
    """One checked copy (models/ibert/convert.copy_weights) loads every BERT/RoBERTa conversion, CLI heads included."""
    from intbert.models.ibert.convert import copy_weights

    target = intbert.IBertModel(intbert.IBertConfig(**TINY), add_pooling_layer=False)
    full = {k: torch.full_like(v, 0.5) for k, v in target.state_dict().items()
            if v.is_floating_point() and k.endswith(("weight", "bias")) and ".activation." not in k}
    copy_weights(target, full, "test")
    assert all(bool((target.state_dict()[k] == 0.5).all()) for k in full)
    with pytest.raises(KeyError, match="test: weight 'pooler.dense.weight' has no I-BERT counterpart"):
        copy_weights(target, {**full, "pooler.dense.weight": torch.zeros(16, 16)}, "test")
    key = "encoder.layer.0.intermediate.dense.weight"
    with pytest.raises(ValueError, match=r"test: encoder\.layer\.0\.intermediate\.dense\.weight has shape \(16, 24\)"):
        copy_weights(target, {**full, key: torch.zeros(16, 24)}, "test")
    with pytest.raises(KeyError, match="no source.*intermediate.dense.weight"):
        copy_weights(target, {k: v for k, v in full.items() if k != key}, "test")


# Layers, top to bottom (DESIGN.md principle 4): a module may import only its own layer or lower ones.
LAYERS = {"cli": 4, "engine": 3, "export": 3, "models": 2, "calibration": 3, "data": 1, "quantization": 1, "errors": 0, "checksum": 0, "atomic": 0}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "intbert" else None


def _imports(path: Path) -> list[str]:
    package = "intbert." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module or "")
    return out


@pytest.mark.parametrize("path", sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_the_layers(path):
    own = _layer("intbert." + ".".join(path.relative_to(SRC).with_suffix("").parts))
    if own is None:
        return
    upward = [m for m in _imports(path) if (_layer(m) or -1) > own]
    assert not upward, f"{path.relative_to(SRC)} imports upward: {upward}"


#: Private names one package may import from another, each with its reason (everything else goes through a public
#: name, so a package's internals can change without breaking another).
PRIVATE_IMPORTS_ALLOWED = {
    ("intbert.engine.backends", "intbert._native"): "the compiled extension module, wrapped by backends/native.py only",
}


def _package_of(module: str) -> str:
    """The package a module belongs to: itself for a package (a folder), else its parent."""
    return module if (SRC.parent / module.replace(".", "/")).is_dir() else module.rsplit(".", 1)[0]


def _private_imports_across_packages(path: Path) -> list[str]:
    module = "intbert." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    own = module.rsplit(".", 1)[0]  # the importing file's package (for an __init__.py: the package itself)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        source = ".".join(module.split(".")[: -node.level] + ([node.module] if node.module else [])) if node.level \
            else node.module
        if not source.startswith("intbert"):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                defined_in = source + "." + alias.name if (SRC.parent / source.replace(".", "/")).is_dir() else source
                if _package_of(defined_in) != own and (own, f"{source}.{alias.name}") not in PRIVATE_IMPORTS_ALLOWED:
                    found.append(f"{source}.{alias.name}")
    return found


def test_no_package_imports_another_packages_private_names():
    offenders = {str(p.relative_to(SRC)): names for p in sorted(SRC.rglob("*.py"))
                 if (names := _private_imports_across_packages(p))}
    assert not offenders, f"private names imported across packages (make them public where they belong): {offenders}"
