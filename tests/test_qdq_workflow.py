"""Workflow helpers on a tiny nn.Sequential of QuantLinear."""

import pytest
import torch
from torch import nn

from intbert.quantization import (
    QuantDescriptor,
    TensorQuantizer,
    calibrate_quantizers,
    disable_quantizers,
    enable_quantizers,
    named_quantizers,
    quantizer_summary,
    recalibrate_weights,
    set_quantizer_by_name,
)
from intbert.quantization.calib import HistogramCalibrator, MaxCalibrator
from intbert.quantization.nn import QuantLinear


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(QuantLinear(6, 8), nn.ReLU(), QuantLinear(8, 3))


class KeywordModel(nn.Module):
    """Takes its input by keyword, as HF models do."""

    def __init__(self):
        super().__init__()
        self.body = tiny_model()

    def forward(self, input_ids, scale=1.0):
        return self.body(input_ids * scale)


BATCHES = [randn(4, 6, seed=s) * (s + 1) for s in range(3)]


def test_max_calibration_sets_exact_amax_and_reenables_quantization():
    model = tiny_model()
    model.train()
    amaxes = calibrate_quantizers(model, BATCHES, progress=False)
    assert set(amaxes) == {"0._input_quantizer", "0._weight_quantizer", "2._input_quantizer", "2._weight_quantizer"}
    assert model[0].input_quantizer.amax.item() == torch.cat(BATCHES).abs().max().item()
    assert torch.equal(model[0].weight_quantizer.amax, model[0].weight.abs().amax(dim=1, keepdim=True))
    assert model.training  # mode restored
    for _, q in named_quantizers(model):
        assert q._if_quant and not q._if_calib and not q._disabled
    # The second layer saw the unquantized ReLU output of the first during calibration.
    with torch.no_grad():
        hidden = torch.cat([torch.relu(nn.functional.linear(b, model[0].weight, model[0].bias)) for b in BATCHES])
    assert model[2].input_quantizer.amax.item() == hidden.abs().max().item()


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_histogram_methods_use_histograms_for_activations_and_max_for_weights(method):
    model = tiny_model()
    calibrate_quantizers(model, BATCHES, method=method, percentile=100.0, progress=False)
    assert isinstance(model[0].input_quantizer.calibrator, HistogramCalibrator)
    assert isinstance(model[0].weight_quantizer.calibrator, MaxCalibrator)
    assert torch.equal(model[0].weight_quantizer.amax, model[0].weight.abs().amax(dim=1, keepdim=True))
    calib = model[0].input_quantizer.calibrator
    expected = calib.compute_amax(method, percentile=100.0)
    assert model[0].input_quantizer.amax.item() == expected.item()


def test_dict_batches_are_passed_as_keywords_and_forward_fn_overrides():
    model = KeywordModel()
    calibrate_quantizers(model, [{"input_ids": b, "scale": 2.0} for b in BATCHES])  # with the tqdm bar
    assert model.body[0].input_quantizer.amax.item() == 2 * torch.cat(BATCHES).abs().max().item()
    seen = []
    calibrate_quantizers(model, BATCHES, forward_fn=lambda m, b: seen.append(m(input_ids=b)), progress=False)
    assert len(seen) == 3
    assert model.body[0].input_quantizer.amax.item() == torch.cat(BATCHES).abs().max().item()


def test_recalibration_starts_from_fresh_statistics():
    model = tiny_model()
    calibrate_quantizers(model, [b * 10 for b in BATCHES], progress=False)
    calibrate_quantizers(model, BATCHES, progress=False)
    assert model[0].input_quantizer.amax.item() == torch.cat(BATCHES).abs().max().item()


def test_quantizer_that_never_runs_fails_strict_calibration():
    model = nn.Sequential(tiny_model(), QuantLinear(3, 3))
    model.extra = QuantLinear(3, 3)  # registered but never called
    model.forward = lambda x: model[1](model[0](x))
    with pytest.raises(RuntimeError, match="never ran"):
        calibrate_quantizers(model, BATCHES, progress=False)
    with pytest.warns(UserWarning, match="never ran"):
        amaxes = calibrate_quantizers(model, BATCHES, progress=False, strict=False)
    assert "extra._input_quantizer" not in amaxes and model.extra.input_quantizer.amax is None
    assert model[1].input_quantizer.amax is not None


def test_disabled_quantizers_are_left_alone():
    model = tiny_model()
    disable_quantizers(model, r"^2\.")
    calibrate_quantizers(model, BATCHES, progress=False)
    assert model[2].input_quantizer.amax is None and model[2].input_quantizer._disabled


def test_no_batches_raises_and_restores_the_switches():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="no batches"):
        calibrate_quantizers(model, [], progress=False)
    for _, q in named_quantizers(model):
        assert q._if_quant and not q._if_calib


def test_error_inside_a_batch_restores_mode_and_switches():
    model = tiny_model()
    model.train()
    with pytest.raises(RuntimeError):
        calibrate_quantizers(model, [randn(2, 5)], progress=False)  # wrong width
    assert model.training
    for _, q in named_quantizers(model):
        assert q._if_quant and not q._if_calib


def test_unknown_method_and_per_channel_histogram_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="method"):
        calibrate_quantizers(model, BATCHES, method="kl")
    model[0]._input_quantizer = TensorQuantizer(QuantDescriptor(axis=1))
    with pytest.raises(ValueError, match="per-tensor"):
        calibrate_quantizers(model, BATCHES, method="entropy", progress=False)


def test_recalibrate_weights_follows_weight_updates():
    model = tiny_model()
    calibrate_quantizers(model, BATCHES, progress=False)
    with torch.no_grad():
        model[0].weight.mul_(3)
    assert recalibrate_weights(model) == ["0", "2"]
    assert torch.equal(model[0].weight_quantizer.amax, model[0].weight.abs().amax(dim=1, keepdim=True))


def test_set_quantizer_by_name_sets_properties_and_fields():
    model = tiny_model()
    names = set_quantizer_by_name(model, r"weight_quantizer$", num_bits=4, _narrow_range=True)
    assert names == ["0._weight_quantizer", "2._weight_quantizer"]
    assert model[0].weight_quantizer.num_bits == 4 and model[0].weight_quantizer.narrow_range
    assert model[0].weight_quantizer.calibrator.num_bits == 4
    assert model[0].input_quantizer.num_bits == 8
    set_quantizer_by_name(model, r"^0\.", _disabled=True)
    assert model[0].input_quantizer._disabled and not model[2].input_quantizer._disabled


def test_set_quantizer_by_name_rejects_unknown_attributes_and_patterns():
    model = tiny_model()
    with pytest.raises(AttributeError, match="num_bitz"):
        set_quantizer_by_name(model, ".*", num_bitz=4)
    with pytest.raises(ValueError, match="no quantizer name matches"):
        set_quantizer_by_name(model, "attention", num_bits=4)


def test_enable_and_disable_by_regex():
    model = tiny_model()
    assert disable_quantizers(model, "input") == ["0._input_quantizer", "2._input_quantizer"]
    assert model[0].input_quantizer._disabled and not model[0].weight_quantizer._disabled
    enable_quantizers(model)
    assert not any(q._disabled for _, q in named_quantizers(model))


def test_summary_table_lists_every_quantizer():
    model = tiny_model()
    calibrate_quantizers(model, BATCHES[:1], progress=False)
    disable_quantizers(model, r"^2\._input")
    model[2].input_quantizer.amax = None
    lines = quantizer_summary(model).splitlines()
    assert lines[0].split() == ["name", "bits", "axis", "amax", "state"]
    row = {line.split()[0]: line for line in lines[2:-1]}
    assert set(row) == {"0._input_quantizer", "0._weight_quantizer", "2._input_quantizer", "2._weight_quantizer"}
    w = model[0].weight_quantizer.amax
    assert f"{w.min().item():.4g}..{w.max().item():.4g} (8)" in row["0._weight_quantizer"]
    assert "(0,)" in row["0._weight_quantizer"] and "quant" in row["0._weight_quantizer"]
    assert "dynamic" in row["2._input_quantizer"] and "disabled" in row["2._input_quantizer"]
    assert lines[-1] == "4 quantizer(s)"
