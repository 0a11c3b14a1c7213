"""Frozen integer I-BERT engine speed, side by side with the CPU runtimes a user could pick instead, in one process.

RoBERTa-base-shaped random model (vocab 50265, 12 layers, hidden 768, fixed seed), S=128, B in {1, 8, 32}, every row
on the same random ids. Rows (each built from the same float weights):

* transformers RobertaModel FP32 eager (the reference for ratios); FP16 / BF16 eager on CUDA
* onnxruntime FP32, and onnxruntime dynamic int8 (``quantize_dynamic``, per-channel QInt8 weights) of that graph
* OpenVINO INT8: ``nncf.quantize`` (post-training, transformer preset) of the converted RobertaModel, calibrated on 2
  batches of 8 random sequences of 128
* CTranslate2 int8: the saved RobertaModel through ``TransformersConverter``, ``ctranslate2.Encoder(compute_type="int8")``
  (CT2 converts RoBERTa encoders, so no BERT stand-in is needed)
* intbert's QDQ ONNX graph: a QDQBertModel holding the same weights (BERT numbers positions from 0 where RoBERTa
  starts after the pad id, so its outputs are compared with a float BertModel holding those weights), calibrated
  with docs/export.md's CPU recipe, ``intbert.export_onnx``: the onnxruntime-target graph in onnxruntime and in
  OpenVINO, and the tensorrt-target graph (signed int8, zero point 0) in OpenVINO, which then runs attention in int8
* intbert simulation (calibrated quant-mode IBertModel; slow, timed once per batch size) and intbert engine
  (``intbert.freeze``, the default backend, whose name is printed); the engine's output must equal the simulation's
* transformers IBertModel quant mode (``--hf-quant``; 5-10x slower than FP32, so off by default)

Timing: the rows take turns run by run (interleaved, the order rotating each round), median of ``--repeats`` after
one warm-up: ``--threads 1 --clock cpu`` (process CPU time: robust to other jobs on a shared machine) or
``--threads 2 --clock wall``. Printed: the CPU with its int8 features (VNNI, AMX), versions, the load average around
each batch size, a markdown table of ms and of ratios vs torch FP32, and each row's mean cosine to its float model
(a check that every runtime computes the same function; the weights are random).

Optional rows need the ``bench`` extra (``pip install -e '.[bench]'``: openvino, nncf, ctranslate2, which leave the
pinned torch alone); without a package its rows are skipped with the reason printed. One run with one thread took 19
minutes of wall time on a 2-vCPU machine shared with other jobs (load average 7); the script prints its own wall and
CPU time at the end.

    python benchmarks/ibert_engine.py --threads 1 --clock cpu
    python benchmarks/ibert_engine.py --threads 2 --clock wall

Issue targets (goals, never test assertions; issue 10 §3): engine >= 1.0x OpenVINO INT8 and >= 3x torch FP32.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertModel
from transformers import IBertConfig as HFIBertConfig  # the baseline we measure against (benchmark only)
from transformers import IBertModel as HFIBertModel
from transformers import RobertaConfig, RobertaModel

import _competitors
import intbert
from _competitors import (Contender, build, ctranslate2_int8, export_float_onnx, full_batch, interleaved,
                          openvino_nncf_int8, ort_contender, ort_dynamic_int8, qdq_rows, torch_contender, versions)
from _machine import cpu_name, int8_features, load  # benchmarks/*.py (scripts run from this folder)

SHAPE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
FP32 = "transformers RobertaModel FP32 (eager)"


def engine_backend(frozen) -> str:
    """The backend the engine resolved to (the default one: it is not chosen here)."""
    try:
        return frozen.encoder.backend().name
    except AttributeError:
        return str(getattr(frozen.encoder, "backend_name", "?"))


def build_intbert(state: dict, calib: list, bits: list[int], device: str):
    """Calibrated quant-mode IBertModels (minmax ranges) with the float weights, and their frozen engines."""
    sims, engines = {}, {}
    for b in bits:
        sim = intbert.IBertModel(intbert.IBertConfig(quant_mode=True, weight_bit=b, **SHAPE), add_pooling_layer=False)
        sim.load_state_dict(state, strict=False)
        intbert.calibrate(sim, calib, method="minmax")
        sims[b] = sim.eval().to(device)
        engines[b] = intbert.freeze(sims[b])
    return sims, engines


def hf_quant_model(state: dict, calib: list):
    hf_quant = HFIBertModel(HFIBertConfig(quant_mode=True, **SHAPE), add_pooling_layer=False)
    hf_quant.load_state_dict(state, strict=False)
    hf_quant.train()  # transformers' I-BERT calibrates by train-mode forwards
    with torch.no_grad():
        for b in calib:
            hf_quant(input_ids=b["input_ids"])
    return hf_quant.eval()

START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, choices=[1, 2])
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: process CPU time (use with --threads 1); wall: wall time. Default: cpu for 1 "
                             "thread, wall for 2")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row at B=1 (3 at larger batches)")
    parser.add_argument("--weight-bits", type=int, nargs="+", default=[8], choices=[7, 8],
                        help="engine rows: 8-bit weights, and 7-bit (the exact u8 x s8 path of CPUs without VNNI)")
    parser.add_argument("--hf-quant", action="store_true", help="add transformers' IBertModel quant mode (slow)")
    parser.add_argument("--openvino-f32", action="store_true",
                        help="compile OpenVINO rows with INFERENCE_PRECISION_HINT=f32 (default: OpenVINO's own, "
                             "bfloat16 float parts on CPUs with AMX-BF16 / AVX512-BF16)")
    parser.add_argument("--layers", type=int, default=12, help="fewer layers for a quick check of the script")
    parser.add_argument("--cpu-time", action="store_true", help=argparse.SUPPRESS)  # old spelling of --clock cpu
    parser.add_argument("--skip-hf-quant", action="store_true", help=argparse.SUPPRESS)  # now the default
    args = parser.parse_args()
    clock = "cpu" if args.cpu_time else args.clock or ("cpu" if args.threads == 1 else "wall")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    if args.openvino_f32:
        _competitors.OPENVINO_CONFIG["INFERENCE_PRECISION_HINT"] = "f32"
    dev = args.device
    SHAPE["num_hidden_layers"] = args.layers

    print(f"device: {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else cpu_name()}); {int8_features()}")
    print(f"threads {args.threads}, {'process CPU' if clock == 'cpu' else 'wall'} time; load average before: {load()}")
    print(versions("torch", "transformers", "onnxruntime", "openvino", "nncf", "ctranslate2"), "\n")

    g = torch.Generator().manual_seed(1)
    calib = [full_batch(torch.randint(3, SHAPE["vocab_size"], (8, args.seq), generator=g)) for _ in range(2)]
    torch.manual_seed(0)
    roberta = RobertaModel(RobertaConfig(**SHAPE), add_pooling_layer=False).eval()
    state = roberta.state_dict()
    bert_twin = BertModel(BertConfig(**SHAPE, attn_implementation="eager"), add_pooling_layer=False).eval()
    bert_twin.load_state_dict(state, strict=False)  # the QDQ rows' float model: same weights, BERT positions

    sims, engines = build_intbert(state, calib, args.weight_bits, dev)
    backend = engine_backend(engines[args.weight_bits[0]])
    with tempfile.TemporaryDirectory() as workdir:  # checkpoint sizes: the float model vs the frozen integer model
        roberta.save_pretrained(f"{workdir}/float")
        engines[args.weight_bits[0]].save_pretrained(f"{workdir}/int")
        sizes = [os.path.getsize(f"{workdir}/{d}/model.safetensors") / 2**20 for d in ("float", "int")]
    print(f"checkpoint: float {sizes[0]:.1f} MiB, frozen integer {sizes[1]:.1f} MiB ({sizes[1] / sizes[0]:.1%}); "
          f"engine backend: {backend}")

    contenders: list[Contender] = [torch_contender(FP32, roberta.to(dev))]
    family = {}  # contender -> "bert" when its float model is bert_twin
    with tempfile.TemporaryDirectory(prefix="intbert-bench-") as folder:
        folder = Path(folder)
        if dev == "cpu":
            fp32_path = str(folder / "fp32.onnx")
            build(contenders, "onnxruntime FP32",
                  lambda: ort_contender("onnxruntime FP32", export_float_onnx(roberta, fp32_path), args.threads))
            build(contenders, "onnxruntime dynamic int8",
                  lambda: ort_dynamic_int8(fp32_path, str(folder / "dyn.onnx"), args.threads))
            build(contenders, "OpenVINO INT8 (NNCF)", lambda: openvino_nncf_int8(roberta, calib, args.threads))

            def ct2():
                roberta.save_pretrained(folder / "roberta")
                return ctranslate2_int8(str(folder / "roberta"), str(folder / "ct2"), args.threads,
                                        vocab_size=SHAPE["vocab_size"])
            build(contenders, "CTranslate2 int8", ct2)

            family.update(dict.fromkeys(qdq_rows(contenders, state, bert_twin.config, calib, folder, args.threads),
                                            "bert"))
        elif dev == "cuda":
            for dtype, label in ((torch.float16, "FP16"), (torch.bfloat16, "BF16")):
                half = RobertaModel(RobertaConfig(**SHAPE), add_pooling_layer=False).eval()
                half.load_state_dict(state)
                contenders.append(torch_contender(f"transformers RobertaModel {label}", half.to(dev, dtype)))
        if args.hf_quant:
            contenders.append(torch_contender("transformers IBertModel quant mode", hf_quant_model(state, calib).to(dev),
                                              max_runs=1))
        sim_name = "intbert simulation"
        contenders.append(torch_contender(sim_name, sims[args.weight_bits[0]], max_runs=1))
        for b, engine in engines.items():
            contenders.append(torch_contender(f"intbert engine, {b}-bit weights ({backend})", engine))

        rows, cosines = {}, {}
        for B in args.batches:
            ids = torch.randint(3, SHAPE["vocab_size"], (B, args.seq), generator=torch.Generator().manual_seed(B))
            batch = {k: v.to(dev) for k, v in full_batch(ids).items()}
            work = {c.name: (lambda c=c: c.run(batch)) for c in contenders}
            before = load()
            repeats = args.repeats if B == 1 else min(args.repeats, 3)
            ms, out = interleaved(work, repeats, clock, max_runs={c.name: c.max_runs for c in contenders})
            print(f"B={B}: load average {before} before, {load()} after")
            for b, engine in engines.items():  # the engine's outputs are the simulation's, bit for bit
                name = f"intbert engine, {b}-bit weights ({backend})"
                want = out[sim_name] if b == args.weight_bits[0] else sims[b](**batch).last_hidden_state
                if not torch.equal(out[name], want):
                    raise SystemExit(f"B={B}: {name} differs from its simulation")
            with torch.inference_mode():
                reference = {"roberta": out[FP32], "bert": bert_twin.to(dev)(**batch).last_hidden_state}
            rows[B] = ms
            cosines[B] = {
                name: torch.nn.functional.cosine_similarity(
                    o.float().flatten(0, 1), reference[family.get(name, "roberta")].float().flatten(0, 1)).mean().item()
                for name, o in out.items()
            }

    print(f"\nRoBERTa-base shape ({args.layers} layers), S={args.seq}, threads {args.threads}, "
          f"{'process CPU' if clock == 'cpu' else 'wall'} time; median of {args.repeats} at B=1 and "
          f"{min(args.repeats, 3)} at larger batches after one warm-up, rows interleaved (simulation: one timed run); "
          f"engine backend: {backend}; engine == simulation (torch.equal) at every batch size\n")
    batches = list(rows)
    print("| contender | " + " | ".join(f"B={B} ms" for B in batches) + " | "
          + " | ".join(f"B={B} vs FP32" for B in batches) + " | cos vs float model |")
    print("|---|" + "---|" * (2 * len(batches) + 1))
    for c in contenders:
        times = " | ".join(f"{rows[B][c.name]:.1f}" for B in batches)
        ratios = " | ".join(f"{rows[B][FP32] / rows[B][c.name]:.2f}x" for B in batches)
        cos = min(cosines[B][c.name] for B in batches)
        print(f"| {c.name} | {times} | {ratios} | {cos:.4f} |")
    print("\nNotes:")
    for c in contenders:
        if c.note:
            print(f"* {c.name}: {c.note}")
    print("* cos: mean over tokens of the cosine to the float model (lowest over batch sizes); QDQ rows are compared "
          "with a float BertModel holding the same weights (BERT position numbering), the others with RobertaModel")
    print(f"\nwhole run: {time.perf_counter() - START:.0f} s wall, {time.process_time():.0f} s process CPU")


if __name__ == "__main__":
    main()
