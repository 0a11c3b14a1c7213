"""The named quantization recipes (intbert.recipes) on all-MiniLM-L6-v2: accuracy of each, and speed where cheap.

Each recipe quantizes a fresh model with ``intbert.apply_recipe`` on the first 256 Rotten Tomatoes snippets; 500
other snippets are embedded (mean pooling, as sentence-transformers does for this model) and compared with the float
BertModel's embeddings by cosine. With ``--onnx``, every QDQBERT recipe is exported for onnxruntime and its whole
embedding pass is timed against onnxruntime FP32 and dynamic int8 (per-channel weights) of the same model, the graphs
taking turns pass by pass; the cosine of the onnxruntime embeddings is printed too (``--openvino``: also each
recipe's tensorrt-target graph in OpenVINO, and OpenVINO's own NNCF int8; the ``bench`` extra). With ``--engine``,
every I-BERT recipe is frozen (default backend), checked equal to the simulation on the evaluation set and timed.
``--methods`` repeats every recipe with each calibration method of its family (how the defaults were chosen).

    python benchmarks/recipes.py [--family qdqbert|ibert|both] [--onnx [--openvino]] [--engine] [--methods]

1 thread times process CPU time (robust to other jobs on the machine); more threads time the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
import transformers
from transformers import AutoTokenizer, BertModel

import intbert
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.ibert.convert import bert_to_ibert
from intbert.recipes import RECIPES
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
METHODS = {"qdqbert": ("max", "percentile", "mse"), "ibert": ("mse", "minmax")}
CLOCK = time.perf_counter


def fresh(family: str):
    if family == "qdqbert":
        return intbert.QDQBertModel.from_pretrained(minilm_path()).eval()
    return bert_to_ibert(minilm_path(), quant_mode=True)


def cosines(embeddings: torch.Tensor, reference: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(embeddings, reference)
    return {"mean": cos.mean().item(), "min": cos.min().item(), "p5": cos.quantile(0.05).item()}


def ort_embeddings(session, evaluation) -> torch.Tensor:
    out = []
    for batch in evaluation:
        hidden = session.run(None, {k: v.numpy() for k, v in batch.items() if k in INPUTS})[0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append((torch.from_numpy(hidden) * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)


def pooled(run, evaluation) -> torch.Tensor:
    """Mean-pooled embeddings from ``run(batch) -> last hidden state`` (a runtime other than onnxruntime)."""
    out = []
    for batch in evaluation:
        hidden = run(batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)


def timed_passes(runs: dict, passes: int) -> dict[str, float]:
    """Median seconds of each ``runs[name]()``; the runs take turns, pass by pass, after one warm-up each."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(passes):
        for name, run in runs.items():
            start = CLOCK()
            run()
            times[name].append(CLOCK() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def float_graphs(float_model: BertModel, folder: str) -> dict[str, str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qdqbert_onnx import export_float  # benchmarks/qdqbert_onnx.py

    fp32 = os.path.join(folder, "fp32.onnx")
    export_float(float_model, fp32)
    dynamic = os.path.join(folder, "dynamic-int8.onnx")
    quantize_dynamic(fp32, dynamic, weight_type=QuantType.QInt8, per_channel=True)
    return {"onnxruntime FP32": fp32, "onnxruntime dynamic int8 (per-channel)": dynamic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("qdqbert", "ibert", "both"), default="both")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--onnx", action="store_true", help="export the QDQBERT recipes and time them in onnxruntime")
    parser.add_argument("--openvino", action="store_true",
                        help="with --onnx: also each recipe's tensorrt-target graph in OpenVINO, and NNCF's own int8")
    parser.add_argument("--engine", action="store_true", help="freeze the I-BERT recipes and time the engine")
    parser.add_argument("--methods", action="store_true", help="every calibration method of each recipe")
    parser.add_argument("--recipes", nargs="*", default=None, help="only these recipe names")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    global CLOCK
    torch.set_num_threads(args.threads)
    if args.threads == 1:
        CLOCK = time.process_time
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()

    print(f"device: cpu ({cpu_name()}), threads {args.threads} ({'process CPU time' if args.threads == 1 else 'wall'}"
          f"), torch {torch.__version__}, transformers {transformers.__version__}, load {load()}")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(args.calib), key=len))
    evaluation = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(args.eval, offset=args.calib), key=len),
                                   batch_size=32)
    print(f"all-MiniLM-L6-v2, calibration {args.calib} snippets (batches of 32), evaluation {args.eval} other snippets "
          "(batches of 32 sorted by length), mean-pooled embeddings vs float BertModel")
    float_model = BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    reference = mean_pooled_embeddings(float_model, evaluation)

    families = ("qdqbert", "ibert") if args.family == "both" else (args.family,)
    rows, graphs, openvino_graphs, engines = [], {}, {}, {}
    scratch = tempfile.TemporaryDirectory(prefix="intbert-recipes-")  # ONNX files, removed at exit
    folder = scratch.name
    for (family, name), recipe in RECIPES.items():
        if family not in families or (args.recipes and name not in args.recipes):
            continue
        for method in (METHODS[family] if args.methods else (recipe.method,)):
            model = fresh(family)
            start = time.perf_counter()
            record = intbert.apply_recipe(model, calib, recipe, method=method)
            seconds = time.perf_counter() - start
            cos = cosines(mean_pooled_embeddings(model, evaluation), reference)
            alphas = [s["alpha"] for s in record.get("smoothing", {}).get("sites", {}).values()]
            rows.append((family, name, method, cos, seconds, alphas))
            print(f"{family:8} {name:18} {method:10} cos mean {cos['mean']:.4f} min {cos['min']:.4f} "
                  f"p5 {cos['p5']:.4f}  quantize {seconds:.1f} s", flush=True)
            if method != recipe.method:
                continue
            if family == "qdqbert" and args.onnx:
                path = os.path.join(folder, f"{name}.onnx")
                intbert.export_onnx(model, path, "onnxruntime", dynamo=False)
                graphs[f"intbert QDQ, {name}"] = path
                if args.openvino:  # signed int8: OpenVINO then runs the attention matmuls in int8 too (docs/export.md)
                    path = os.path.join(folder, f"{name}-tensorrt.onnx")
                    intbert.export_onnx(model, path, "tensorrt", dynamo=False)
                    openvino_graphs[f"intbert QDQ (tensorrt target) in OpenVINO, {name}"] = path
            if family == "ibert" and args.engine:
                engines[name] = (model, intbert.freeze(model))

    print("\n| family | recipe | calibration | cos mean | cos min | cos p5 | quantize s | alpha per site (min-max) |")
    print("|---|---|---|---|---|---|---|---|")
    for family, name, method, cos, seconds, alphas in rows:
        live = [a for a in alphas if a is not None]
        spread = f"{min(live):.2f}-{max(live):.2f} ({len(live)}/{len(alphas)} sites)" if live else "-"
        print(f"| {family} | {name} | {method} | {cos['mean']:.4f} | {cos['min']:.4f} | {cos['p5']:.4f} "
              f"| {seconds:.1f} | {spread} |")

    if graphs:
        from intbert.export.ort_kernels import inspect_optimized_graph, make_session

        paths = {**float_graphs(float_model, folder), **graphs}
        sessions = {name: make_session(path, threads=args.threads) for name, path in paths.items()}
        runs = {name: (lambda s=s: ort_embeddings(s, evaluation)) for name, s in sessions.items()}
        if openvino_graphs:
            from _competitors import openvino_nncf_int8, openvino_onnx  # benchmarks/_competitors.py

            nncf = openvino_nncf_int8(float_model, calib[:4], args.threads)
            runs["OpenVINO INT8 (NNCF post-training)"] = lambda: pooled(nncf.run, evaluation)
            for name, path in openvino_graphs.items():
                runs[name] = lambda c=openvino_onnx(name, path, args.threads): pooled(c.run, evaluation)
        seconds = timed_passes(runs, args.passes)
        base = seconds["onnxruntime dynamic int8 (per-channel)"]
        print(f"\nruntimes, {args.eval} snippets, batches of 32, median of {args.passes} passes (OpenVINO: its "
              "default float parts, bf16 where the CPU has AMX-BF16)\n")
        print("| graph | int8 kernels (ORT) | embedding pass s | vs ORT dynamic int8 | cos mean | cos min |")
        print("|---|---|---|---|---|---|")
        for name, run in runs.items():
            kernels = inspect_optimized_graph(paths[name])[1].int8_kernels if name in paths else "-"
            cos = cosines(run(), reference)
            print(f"| {name} | {kernels} | {seconds[name]:.2f} | {base / seconds[name]:.2f}x "
                  f"| {cos['mean']:.4f} | {cos['min']:.4f} |")

    if engines:
        print(f"\nI-BERT engine (default backend), {args.eval} snippets, median of {args.passes} passes\n")
        print("| recipe | engine == simulation | engine pass s | float BertModel pass s |")
        print("|---|---|---|---|")
        for name, (model, frozen) in engines.items():
            with torch.no_grad():
                same = all(torch.equal(frozen(**b).last_hidden_state[b["attention_mask"].bool()],
                                       model(**b).last_hidden_state[b["attention_mask"].bool()]) for b in evaluation)
            seconds = timed_passes({"engine": lambda f=frozen: mean_pooled_embeddings(f, evaluation),
                                    "float": lambda: mean_pooled_embeddings(float_model, evaluation)}, args.passes)
            print(f"| {name} | {same} | {seconds['engine']:.2f} | {seconds['float']:.2f} |")


if __name__ == "__main__":
    main()
