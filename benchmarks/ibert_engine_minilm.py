"""all-MiniLM-L6-v2 on real sentences: intbert's engine against the CPU runtimes a user could pick instead, in one process.

The real weights (``intbert.data.minilm_path()``) embed N Rotten Tomatoes snippets in batches of 32, each batch padded
to its own longest sentence (dynamic lengths), mean-pooled as sentence-transformers does. Calibration (every
quantized contender) uses 256 other snippets. Rows:

* transformers BertModel FP32 eager (the reference for speed ratios and cosines)
* onnxruntime FP32, and onnxruntime dynamic int8 (``quantize_dynamic``, per-channel QInt8 weights)
* OpenVINO INT8: ``nncf.quantize`` (post-training, transformer preset) of the converted float model, calibrated on 4
  batches of 32 calibration snippets
* CTranslate2 int8 (``ctranslate2.Encoder``, compute_type int8; fed each sentence without its padding)
* intbert's QDQ ONNX graph (``intbert.export_onnx`` of a QDQBertModel, docs/export.md's CPU recipe): the
  onnxruntime-target graph in onnxruntime and in OpenVINO, and the tensorrt-target graph (signed int8, zero point 0)
  in OpenVINO, which then runs attention in int8
* intbert simulation (the calibrated I-BERT, ``intbert.bert_to_ibert``) and intbert engine (``intbert.freeze``, the
  default backend, whose name is printed); the engine's embeddings must equal the simulation's (torch.equal)

Each row's time is one whole embedding pass; the rows take turns pass by pass (interleaved, order rotating), median
of ``--passes`` after one warm-up pass. ``--threads 1 --clock cpu`` (process CPU time: robust on a shared machine) or
``--threads 2 --clock wall``. Also printed: the CPU with its int8 features (VNNI, AMX), the load average before and
after, each row's mean / min cosine of the sentence embeddings to FP32's.

Optional rows need the ``bench`` extra (``pip install -e '.[bench]'``: openvino, nncf, ctranslate2, which leave the
pinned torch alone); without a package its rows are skipped with the reason printed. One run with one thread took
210 s of process CPU time (11 minutes of wall time on a 2-vCPU machine shared with other jobs, load average 9).

    python benchmarks/ibert_engine_minilm.py --threads 1 --clock cpu
    python benchmarks/ibert_engine_minilm.py --threads 2 --clock wall
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertModel

import _competitors
import intbert
from _competitors import (Contender, build, ctranslate2_int8, export_float_onnx, interleaved, openvino_nncf_int8,
                          ort_contender, ort_dynamic_int8, qdq_rows, torch_contender, versions)
from _machine import cpu_name, int8_features, load  # benchmarks/*.py (scripts run from this folder)
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches

FP32 = "transformers BertModel FP32 (eager)"


def engine_backend(frozen) -> str:
    """The backend the engine resolved to (the default one: it is not chosen here)."""
    try:
        return frozen.encoder.backend().name
    except AttributeError:
        return str(getattr(frozen.encoder, "backend_name", "?"))

START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, choices=[1, 2])
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: process CPU time (use with --threads 1); wall: wall time. Default: cpu for 1 "
                             "thread, wall for 2")
    parser.add_argument("--passes", type=int, default=3, help="timed embedding passes per row (after one warm-up)")
    parser.add_argument("--sim-passes", type=int, default=1, help="timed passes of the (slow) simulation")
    parser.add_argument("--openvino-f32", action="store_true",
                        help="compile OpenVINO rows with INFERENCE_PRECISION_HINT=f32 (default: OpenVINO's own, "
                             "bfloat16 float parts on CPUs with AMX-BF16 / AVX512-BF16)")
    args = parser.parse_args()
    if args.openvino_f32:
        _competitors.OPENVINO_CONFIG["INFERENCE_PRECISION_HINT"] = "f32"
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()

    print(f"CPU: {cpu_name()}; {int8_features()}")
    print(f"threads {args.threads}, {'process CPU' if clock == 'cpu' else 'wall'} time; load average before: {load()}")
    print(versions("torch", "transformers", "onnxruntime", "openvino", "nncf", "ctranslate2"), "\n")

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    calibration_text = sorted(rotten_tomatoes_sentences(256), key=len)
    calibration = tokenized_batches(tokenizer, calibration_text, batch_size=64)
    batches = tokenized_batches(tokenizer, rotten_tomatoes_sentences(args.sentences, offset=256), batch_size=args.batch)
    lengths = [b["input_ids"].shape[1] for b in batches]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    # OpenVINO calibrates on batches shaped like the benchmark's: 32 snippets in file order, dynamic padding.
    ov_calibration = tokenized_batches(tokenizer, rotten_tomatoes_sentences(128), batch_size=args.batch)

    float_bert = BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    contenders: list[Contender] = [torch_contender(FP32, float_bert)]
    with tempfile.TemporaryDirectory(prefix="intbert-bench-") as folder:
        folder = Path(folder)
        fp32_path = str(folder / "fp32.onnx")
        build(contenders, "onnxruntime FP32",
              lambda: ort_contender("onnxruntime FP32", export_float_onnx(float_bert, fp32_path), args.threads))
        build(contenders, "onnxruntime dynamic int8",
              lambda: ort_dynamic_int8(fp32_path, str(folder / "dyn.onnx"), args.threads))
        build(contenders, "OpenVINO INT8 (NNCF)", lambda: openvino_nncf_int8(float_bert, ov_calibration, args.threads))
        build(contenders, "CTranslate2 int8",
              lambda: ctranslate2_int8(str(minilm_path()), str(folder / "ct2"), args.threads))
        qdq_rows(contenders, float_bert.state_dict(), float_bert.config, calibration, folder, args.threads)

        sim = intbert.bert_to_ibert(minilm_path(), quant_mode=True)
        intbert.calibrate(sim, calibration)  # mse ranges, I-BERT's default
        sim.eval()
        frozen = intbert.freeze(sim)
        backend = engine_backend(frozen)
        contenders.append(torch_contender("intbert simulation", sim, max_runs=args.sim_passes))
        contenders.append(torch_contender(f"intbert engine ({backend} backend)", frozen))

        print(f"\n{args.sentences} snippets, batch {args.batch}, padded lengths {min(lengths)}..{max(lengths)} "
              f"(mean {sum(lengths) / len(lengths):.1f}); {real} real tokens in {padded} positions "
              f"({padded / real:.2f}x); engine backend: {backend}")
        work = {c.name: (lambda c=c: mean_pooled_embeddings(c, batches)) for c in contenders}
        ms, embeddings = interleaved(work, args.passes, clock, max_runs={c.name: c.max_runs for c in contenders})

    sim_name, engine_name = contenders[-2].name, contenders[-1].name
    exact = torch.equal(embeddings[engine_name], embeddings[sim_name])
    print(f"engine embeddings == simulation embeddings (torch.equal): {exact}")
    print(f"load average after: {load()}\n")
    reference = embeddings[FP32]
    print(f"| contender | pass ms ({len(batches)} batches) | ms / batch | speedup vs FP32 | cos mean | cos min |")
    print("|---|---|---|---|---|---|")
    for c in contenders:
        cos = torch.nn.functional.cosine_similarity(embeddings[c.name].float(), reference)
        print(f"| {c.name} | {ms[c.name]:.0f} | {ms[c.name] / len(batches):.1f} | {ms[FP32] / ms[c.name]:.2f}x "
              f"| {cos.mean():.4f} | {cos.min():.4f} |")
    print("\nNotes:")
    for c in contenders:
        if c.note:
            print(f"* {c.name}: {c.note}")
    print(f"\nwhole run: {time.perf_counter() - START:.0f} s wall, {time.process_time():.0f} s process CPU")
    if not exact:
        raise SystemExit("the engine's embeddings differ from the simulation's")


if __name__ == "__main__":
    main()
