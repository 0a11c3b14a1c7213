"""QDQBERT's ONNX export in onnxruntime (CPU) against onnxruntime FP32 and onnxruntime dynamic int8, side by side.

Part 1, speed at the BERT-base shape (12 layers, hidden 768, random weights with a fixed seed), sequence 128, batch 1
and 8: one float model exported to ONNX FP32, the same file through ``onnxruntime.quantization.quantize_dynamic``
(QInt8 weights, the default per-tensor and per-channel), and ``intbert.export_onnx(target="onnxruntime")`` of a
QDQBertModel with the same weights, calibrated (max) on random ids: every QDQBERT placement, and the CPU recipe
without the residual-add quantizers (onnxruntime runs those adds in float anyway).

Part 2, all-MiniLM-L6-v2 on real sentences: calibrated on 256 Rotten Tomatoes snippets, 500 other snippets embedded
(mean pooling) by each graph; cosine to the float PyTorch embeddings and the time of the whole embedding pass.

Part 3, u8 x s8 saturation (``--saturation``, quick): a tiny calibrated QDQBertModel exported for onnxruntime with
``reduce_range`` left to the CPU check and forced off; ``verify_onnx`` against PyTorch. On a CPU without VNNI the
full 8-bit weights overflow MLAS's int16 pair sums; to see it on a VNNI machine, emulate one:
``qemu-x86_64 -cpu EPYC-Milan /path/to/python3.11 benchmarks/qdqbert_onnx.py --saturation`` (the interpreter binary,
not a shell shim).

    python benchmarks/qdqbert_onnx.py [--threads 2] [--repeats 10] [--dynamo] [--saturation]

Every session gets ``intra_op_num_threads = --threads``; the graphs take turns run by run (so a change in machine load
hits them alike) and times are medians after one warm-up run: wall clock with 2 or more threads, process CPU time with 1 thread (robust to other jobs time-slicing the core; on a quiet machine the two
agree). Prints the CPU, the load average before and after (a busy machine makes 2-thread numbers meaningless: use
--threads 1 then), and markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoTokenizer, BertConfig, BertModel

from intbert import export_onnx
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.engine.backends.ort_gemm import u8s8_is_exact_for_8bit
from intbert.export.ort_kernels import inspect_optimized_graph, make_session
from intbert.models.qdqbert import QDQBertConfig, QDQBertModel, calibrate_qdq, clip_gelu
from intbert.quantization import disable_quantizers
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


class FloatEntry(torch.nn.Module):
    """BertModel with the graph signature intbert's export uses, for the FP32 and dynamic-int8 baselines."""

    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


def export_float(model: BertModel, path: str) -> None:
    example = {k: torch.ones(2, 8, dtype=torch.long) for k in INPUTS}
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FloatEntry(model).eval(), (), path, kwargs=example, input_names=list(INPUTS),
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=18, dynamo=False)


def dynamic_int8(fp32: str, path: str, per_channel: bool) -> None:
    quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=per_channel)


def qdq_graphs(model: QDQBertModel, batches, folder: str, dynamo: bool, tag: str) -> dict[str, str]:
    """Calibrate ``model`` (a fresh QDQBertModel) twice over: every placement, and the CPU recipe; export both."""
    paths = {}
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # before calibration: no _amax keys yet
    for variant in ("all placements", "no residual-add Q/DQ"):
        qdq = model if variant == "all placements" else type(model)(model.config, add_pooling_layer=model.pooler is not None)
        if qdq is not model:
            qdq.load_state_dict(weights, strict=True)
            disable_quantizers(qdq, r"\.add_")
        qdq.eval()
        calibrate_qdq(qdq, batches, method="max", progress=False)
        if variant != "all placements":
            clip_gelu(qdq, 10.0)
        path = os.path.join(folder, f"{tag}-qdq-{len(paths)}.onnx")
        export_onnx(qdq, path, "onnxruntime", dynamo=dynamo)
        paths[variant] = (path, qdq)
    return paths


CLOCK = time.perf_counter  # main() switches to time.process_time for 1 thread


def interleaved_median_ms(sessions: dict, feed: dict, repeats: int) -> dict[str, float]:
    """Median ms per session; the sessions take turns, run by run, so that a change in machine load hits them alike."""
    for session in sessions.values():
        session.run(None, feed)  # warm-up: first-run allocations and kernel packing
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = CLOCK()
            session.run(None, feed)
            times[name].append((CLOCK() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bert_base(args, folder: str) -> None:
    config = BertConfig(attn_implementation="eager")  # BERT-base shape; eager attention exports as plain MatMuls
    torch.manual_seed(0)
    float_model = BertModel(config, add_pooling_layer=False).eval()
    qdq = QDQBertModel(QDQBertConfig(**{field: getattr(config, field) for field in SHAPE_FIELDS}), add_pooling_layer=False)
    qdq.load_state_dict(float_model.state_dict(), strict=True)  # same keys: quantizers hold no state before calibration
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(1000, config.vocab_size, (8, 128), generator=g),
              "attention_mask": torch.ones(8, 128, dtype=torch.long),
              "token_type_ids": torch.zeros(8, 128, dtype=torch.long)} for _ in range(2)]

    fp32 = os.path.join(folder, "base-fp32.onnx")
    export_float(float_model, fp32)
    graphs = {"ORT FP32": fp32}
    for per_channel in (False, True):
        path = os.path.join(folder, f"base-dyn-{per_channel}.onnx")
        dynamic_int8(fp32, path, per_channel)
        graphs[f"ORT dynamic int8 ({'per-channel' if per_channel else 'per-tensor'} weights)"] = path
    for variant, (path, _) in qdq_graphs(qdq, calib, folder, args.dynamo, "base").items():
        graphs[f"intbert QDQ, {variant}"] = path

    print(f"\n### BERT-base shape (12 x 768, random weights), sequence 128, {args.threads} thread(s)\n")
    header = "| graph | int8 kernels | B=1 ms | B=8 ms | B=1 vs dyn int8 | B=8 vs dyn int8 | cos vs torch FP32 (B=8) |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(2)
    feeds = {}
    for batch in (1, 8):
        ids = torch.randint(1000, config.vocab_size, (batch, 128), generator=g)
        feeds[batch] = {"input_ids": ids.numpy(), "attention_mask": np.ones((batch, 128), np.int64),
                        "token_type_ids": np.zeros((batch, 128), np.int64)}
    with torch.no_grad():
        reference = float_model(**{k: torch.from_numpy(v) for k, v in feeds[8].items()}).last_hidden_state.numpy()
    sessions = {name: make_session(path, threads=args.threads) for name, path in graphs.items()}
    ms = {batch: interleaved_median_ms(sessions, feeds[batch], args.repeats if batch == 1 else max(3, args.repeats // 2))
          for batch in (1, 8)}
    rows = {}
    for name, path in graphs.items():
        _, graph = inspect_optimized_graph(path)
        out = sessions[name].run(None, feeds[8])[0]
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out).flatten(0, 1),
                                                    torch.from_numpy(reference).flatten(0, 1)).mean().item()
        rows[name] = (graph.int8_kernels, {batch: ms[batch][name] for batch in (1, 8)}, cos)
    base = rows["ORT dynamic int8 (per-tensor weights)"][1]
    for name, (kernels, ms, cos) in rows.items():
        print(f"| {name} | {kernels} | {ms[1]:.1f} | {ms[8]:.1f} | {base[1] / ms[1]:.2f}x | {base[8] / ms[8]:.2f}x "
              f"| {cos:.4f} |")


def minilm(args, folder: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(256), key=len))
    evaluation = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(500, offset=256), key=len), batch_size=32)
    float_model = BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    reference = mean_pooled_embeddings(float_model, evaluation)

    fp32 = os.path.join(folder, "minilm-fp32.onnx")
    export_float(float_model, fp32)
    graphs = {"ORT FP32": (fp32, None)}
    for per_channel in (False, True):
        path = os.path.join(folder, f"minilm-dyn-{per_channel}.onnx")
        dynamic_int8(fp32, path, per_channel)
        graphs[f"ORT dynamic int8 ({'per-channel' if per_channel else 'per-tensor'} weights)"] = (path, None)
    qdq = QDQBertModel.from_pretrained(minilm_path())
    for variant, (path, model) in qdq_graphs(qdq, calib, folder, args.dynamo, "minilm").items():
        graphs[f"intbert QDQ, {variant}"] = (path, model)

    print(f"\n### all-MiniLM-L6-v2, 500 Rotten Tomatoes snippets (batches of 32), {args.threads} thread(s)\n")
    print("| graph | int8 kernels | embedding pass s | vs dyn int8 | cos mean | cos min | ORT vs its torch model: cos mean / min |")
    print("|---|---|---|---|---|---|---|")
    feeds = [{k: v.numpy() for k, v in batch.items() if k in INPUTS} for batch in evaluation]
    sessions = {name: make_session(path, threads=args.threads) for name, (path, _) in graphs.items()}
    for session in sessions.values():
        session.run(None, feeds[0])  # warm-up
    times = {name: [] for name in graphs}
    pooled = {}
    for _ in range(args.passes):  # the graphs take turns, pass by pass
        for name, session in sessions.items():
            embeddings = []
            start = CLOCK()
            for feed, batch in zip(feeds, evaluation):
                hidden = session.run(None, feed)[0]
                mask = batch["attention_mask"].unsqueeze(-1).float()
                embeddings.append((torch.from_numpy(hidden) * mask).sum(1) / mask.sum(1).clamp(min=1))
            times[name].append(CLOCK() - start)
            pooled[name] = torch.cat(embeddings)
    rows = {}
    for name, (path, model) in graphs.items():
        _, graph = inspect_optimized_graph(path)
        cos = torch.nn.functional.cosine_similarity(pooled[name], reference)
        agreement = ""
        if model is not None:  # the exported model itself, run in torch: does ORT reproduce it?
            own = torch.nn.functional.cosine_similarity(pooled[name], mean_pooled_embeddings(model, evaluation))
            agreement = f"{own.mean().item():.5f} / {own.min().item():.5f}"
        rows[name] = (graph.int8_kernels, statistics.median(times[name]), cos, agreement)
    base = rows["ORT dynamic int8 (per-tensor weights)"][1]
    for name, (kernels, seconds, cos, agreement) in rows.items():
        print(f"| {name} | {kernels} | {seconds:.2f} | {base / seconds:.2f}x | {cos.mean().item():.4f} "
              f"| {cos.min().item():.4f} | {agreement} |")


def saturation(args, folder: str) -> None:
    from intbert.export import verify_onnx

    config = QDQBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    model = QDQBertModel(config).eval()
    g = torch.Generator().manual_seed(0)

    def batch(batch_size: int, seq: int) -> dict:
        return {"input_ids": torch.randint(0, 99, (batch_size, seq), generator=g),
                "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
                "token_type_ids": torch.zeros(batch_size, seq, dtype=torch.long)}

    calibrate_qdq(model, [batch(3, 7), batch(3, 7)], progress=False)
    checks = [batch(3, 7), batch(1, 13), batch(5, 3)]
    print(f"\n### u8 x s8 saturation: tiny QDQBertModel (2 x 32), u8s8_is_exact_for_8bit() = {u8s8_is_exact_for_8bit()}\n")
    print("| reduce_range | weights written | max abs diff vs torch | mean abs diff |")
    print("|---|---|---|---|")
    for reduce_range in (None, False, True):
        path = os.path.join(folder, f"tiny-{reduce_range}.onnx")
        result = export_onnx(model, path, "onnxruntime", dynamo=False, reduce_range=reduce_range)
        report = verify_onnx(model, path, checks, threads=1)
        print(f"| {reduce_range} | {'7-bit' if result.reduce_range else '8-bit'} | {report.max_abs_diff:.3g} "
              f"| {report.mean_abs_diff:.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per BERT-base shape (half for B=8)")
    parser.add_argument("--passes", type=int, default=5, help="timed embedding passes per MiniLM graph")
    parser.add_argument("--dynamo", action="store_true", help="export QDQ with the dynamo exporter (slower export)")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--saturation", action="store_true", help="only part 3 (the u8 x s8 saturation check)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.threads == 1 else time.perf_counter
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    ort.set_default_logger_severity(3)
    saturate = not u8s8_is_exact_for_8bit()
    print(f"device: cpu ({cpu_name()}), {os.cpu_count()} logical CPUs, u8s8 saturates (probe): {saturate}; "
          f"threads {args.threads} ({'process CPU time' if args.threads == 1 else 'wall clock'}); torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"transformers {transformers.__version__}; load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="intbert-bench-") as folder:
        if args.saturation:
            saturation(args, folder)
            return
        if not args.skip_base:
            bert_base(args, folder)
        minilm(args, folder)
        saturation(args, folder)
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
