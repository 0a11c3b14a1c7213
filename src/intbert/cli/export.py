"""``intbert export``: a quantized folder -> an ONNX file, checked against the PyTorch model in onnxruntime.

QDQBERT becomes a QuantizeLinear/DequantizeLinear graph (for onnxruntime or TensorRT); I-BERT becomes the frozen
engine's integer-op graph (onnxruntime), whose int8 hidden states equal the engine's bit for bit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from . import deploy
from .arguments import add_batch_options, add_data_options, positive_int
from .artifacts import load_quantized
from .checkpoints import inspect_checkpoint
from .console import megabytes
from .errors import UsageError
from .paths import check_output_file
from .textfile import read_examples

TARGETS = ("onnxruntime", "tensorrt")
#: Without --data, the check runs on random token ids of these lengths (padding included), from a fixed seed.
SYNTHETIC_LENGTHS = (5, 17, 33)


def synthetic_batches(config, lengths=SYNTHETIC_LENGTHS, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Batches of random ids with ragged padding, so the check also covers masked positions."""
    import torch

    from .inference import model_max_length

    g = torch.Generator().manual_seed(seed)
    low = min(config.vocab_size - 1, 5)  # skip the first ids, which are special tokens in BERT-style vocabularies
    batches = []
    for length in lengths:
        length = min(length, model_max_length(config))
        ids = torch.randint(low, config.vocab_size, (batch_size, length), generator=g)
        mask = torch.ones_like(ids)
        for row in range(1, batch_size):  # rows shorter by 0, 1, 2 ... tokens
            mask[row, max(1, length - row):] = 0
        ids = ids.masked_fill(mask == 0, config.pad_token_id or 0)
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
    return batches


def _graph(result) -> str:
    """What the exporter wrote, in words: Q/DQ nodes for QDQBERT, the integer graph's kernels for I-BERT."""
    if hasattr(result, "quantize_nodes"):
        return (f"{result.quantize_nodes} QuantizeLinear, {result.dequantize_nodes} DequantizeLinear, "
                f"{result.quantized_linears} quantized linears")
    return (f"integer-only encoder graph, {sum(result.op_counts.values())} nodes, int8 GEMMs stored "
            f"{result.weight_kernel}")


def add_parser(commands) -> None:
    p = commands.add_parser(
        "export", help="export a quantized folder to ONNX and check it in onnxruntime",
        description="Write DIR's model as an ONNX graph (QDQBERT: QuantizeLinear/DequantizeLinear nodes; I-BERT: the "
                    "integer engine's ops), then compare onnxruntime's outputs with PyTorch's (max/mean |diff|, "
                    "int8 kernels; I-BERT: whether the int8 hidden states are bit-identical).")
    p.add_argument("dir", metavar="DIR", help="a folder written by intbert quantize or intbert qat")
    p.add_argument("--onnx", metavar="PATH", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="onnxruntime (default) or tensorrt (QDQBERT only: signed int8 Q/DQ)")
    p.add_argument("--data", metavar="FILE", help="check on these examples (default: random token ids)")
    p.add_argument("--max-examples", type=positive_int, default=64, metavar="N",
                   help="examples of --data to check on (default: 64)")
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    add_data_options(p, labels=False)
    add_batch_options(p, batch_size=16)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_checkpoint(args.dir)
    if not ckpt.quantized:
        raise UsageError(f"{ckpt.path} has no quantization_report.json: quantize it first "
                         "(intbert quantize MODEL --scheme qdq ...)")
    if ckpt.report.get("scheme") == "ibert" and args.target != "onnxruntime":
        raise UsageError(f"{ckpt.path} is an I-BERT model: its integer graph runs in onnxruntime only (int64 Mod, "
                         "BitShift and CumSum, which TensorRT lacks); use --target onnxruntime, or a QDQBERT for "
                         "TensorRT")
    check_output_file(args.onnx, "--onnx", args.overwrite)
    texts = read_examples(args.data, args.text_column).texts[: args.max_examples] if args.data else None
    from .inference import make_batches, model_max_length
    from .loading import load_tokenizer

    model = load_quantized(ckpt)
    if texts is not None:
        tokenizer = load_tokenizer(ckpt.path)
        batches = make_batches(tokenizer, texts, args.batch_size,
                               min(args.max_length, model_max_length(model.config))).batches
    else:
        batches = synthetic_batches(model.config)
    # Exported and checked under a hidden name beside --onnx, then renamed over it: an export that fails its check,
    # or a run that is interrupted, leaves the old file (if any) as it was. The name is intbert.atomic's, so the
    # staging folder of a killed run is removed by the next export to the same path.
    from intbert.atomic import TAG, clean_stale

    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(args.onnx)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.onnx.name}.{TAG}-new-{os.getpid()}-", dir=args.onnx.parent))
    try:
        staged = staging / args.onnx.name
        result = deploy.export_onnx(model, staged, args.target)
        check = deploy.verify_onnx(model, staged, batches)
        os.replace(staged, args.onnx)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {args.onnx} ({megabytes(args.onnx.stat().st_size)}), target {args.target}: {_graph(result)}")
    print(f"  onnxruntime vs PyTorch on {check.batches} batches: {check}")
    return 0
