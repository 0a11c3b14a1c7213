"""``intbert predict``: run a model folder on texts given on the command line.

What comes out depends on the head: the top tokens for each mask of a masked-LM, the label and its
probability for a sequence classifier, a label per token for token classification, and the mean-pooled
sentence embedding for a bare encoder.
"""

from __future__ import annotations

import argparse
import json

from .arguments import add_device_option, positive_int, resolve_device
from .artifacts import load_quantized, source_checkpoint
from .checkpoints import Checkpoint, inspect_checkpoint
from .errors import UsageError

#: Mask spellings accepted in the text whatever the tokenizer's own (BERT's [MASK], RoBERTa's <mask>).
MASK_SPELLINGS = ("[MASK]", "<mask>")


def add_parser(commands) -> None:
    p = commands.add_parser(
        "predict", help="fill masks, classify, or embed texts with a model folder",
        description="Run DIR (a quantized folder, or any supported float checkpoint) on TEXT: fill-mask for masked-LM "
                    "heads (write [MASK] or <mask>), labels for classifiers, embeddings for bare encoders.")
    p.add_argument("dir", metavar="DIR", help="model directory")
    p.add_argument("texts", metavar="TEXT", nargs="+", help="input text(s)")
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="fill-mask candidates (default: 5)")
    p.add_argument("--float", dest="use_float", action="store_true",
                   help="run the float model DIR was quantized from, for comparison")
    p.add_argument("--json", action="store_true", help="print JSON (full embeddings and probabilities)")
    add_device_option(p)
    p.set_defaults(run=run)


def _load(ckpt: Checkpoint, use_float: bool, device: str):
    from .loading import load_float

    if ckpt.quantized and not use_float:
        return load_quantized(ckpt, device)
    if use_float and ckpt.quantized:
        return load_float(source_checkpoint(ckpt), ckpt.head, new_head="refuse").to(device)
    return load_float(ckpt).to(device)


def _with_tokenizer_mask(texts: list[str], mask: str | None) -> list[str]:
    if mask is None:
        raise UsageError("this tokenizer has no mask token, so the model cannot fill masks")
    out = []
    for text in texts:
        for spelling in MASK_SPELLINGS:
            text = text.replace(spelling, mask)
        if mask not in text:
            raise UsageError(f"no mask in {text!r}: write [MASK] (or <mask>) where a word should be predicted")
        out.append(text)
    return out


def fill_mask(model, tokenizer, texts: list[str], top_k: int, device: str) -> list[dict]:
    import torch

    from .inference import encode, model_max_length

    batch = encode(tokenizer, texts, model_max_length(model.config))
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    results = []
    for i, text in enumerate(texts):
        masks = []
        for pos in (batch["input_ids"][i] == tokenizer.mask_token_id).nonzero().flatten().tolist():
            probs = logits[i, pos].softmax(-1)
            top = probs.topk(min(top_k, probs.numel()))
            masks.append([{"token": tokenizer.decode([int(t)]).strip(), "probability": float(p)}
                          for p, t in zip(top.values, top.indices)])
        results.append({"text": text, "masks": masks})
    return results


def classify(model, tokenizer, texts: list[str], head: str, device: str) -> list[dict]:
    import torch

    from .inference import encode, example_outputs, model_max_length

    batch = encode(tokenizer, texts, model_max_length(model.config))
    with torch.no_grad():
        outputs = example_outputs(model(**{k: v.to(device) for k, v in batch.items()}), batch, head)
    id2label = model.config.id2label
    results = []
    for i, (text, out) in enumerate(zip(texts, outputs)):
        probs = out.softmax(-1)
        if head == "sequence-classification":
            best = int(probs.argmax())
            results.append({"text": text, "label": id2label[best], "probability": float(probs[best]),
                            "probabilities": {id2label[j]: float(p) for j, p in enumerate(probs)}})
        else:  # token classification: one label per real token
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            tokens = tokenizer.convert_ids_to_tokens(ids)
            results.append({"text": text, "tokens": [{"token": t, "label": id2label[int(p.argmax())]}
                                                     for t, p in zip(tokens, probs)]})
    return results


def embed(model, tokenizer, texts: list[str], device: str) -> list[dict]:
    import torch

    from .inference import encode, example_outputs, model_max_length

    batch = encode(tokenizer, texts, model_max_length(model.config))
    with torch.no_grad():
        pooled = example_outputs(model(**{k: v.to(device) for k, v in batch.items()}), batch, "base")
    return [{"text": t, "embedding": e.tolist(), "norm": float(e.norm())} for t, e in zip(texts, pooled)]


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_checkpoint(args.dir)
    device = resolve_device(args.device)
    model = _load(ckpt, args.use_float, device)
    from .loading import load_tokenizer

    tokenizer = load_tokenizer(ckpt.path)
    head = ckpt.head
    if head == "masked-lm":
        texts = _with_tokenizer_mask(args.texts, tokenizer.mask_token)
        results = fill_mask(model, tokenizer, texts, args.top_k, device)
    elif head == "base":
        results = embed(model, tokenizer, args.texts, device)
    else:
        results = classify(model, tokenizer, args.texts, head, device)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        if head == "masked-lm":
            for n, candidates in enumerate(r["masks"], 1):
                shown = ", ".join(f"{c['token']} {c['probability']:.3f}" for c in candidates)
                print(f"{r['text']}\n  mask {n}: {shown}")
        elif head == "sequence-classification":
            print(f"{r['label']}\t{r['probability']:.3f}\t{r['text']}")
        elif head == "base":
            head_values = ", ".join(f"{v:.4f}" for v in r["embedding"][:6])
            print(f"{r['text']}\n  embedding: {len(r['embedding'])} values, norm {r['norm']:.4f}: [{head_values}, ...]")
        else:
            print(r["text"] + "\n  " + " ".join(f"{t['token']}/{t['label']}" for t in r["tokens"]))
    return 0
