"""Frozen integer I-BERT engine speed, side by side with what a user would run instead.

RoBERTa-base-shaped random model (vocab 50265, 12 layers, hidden 768), S=128, B in {1, 8, 32}, all
in one process, each row timed on the same random ids after a warm-up:

* transformers RobertaModel FP32 eager (and FP16 / BF16 eager on CUDA)
* transformers IBertModel quant mode (fake quantization, calibrated by train-mode forwards)
* onnxruntime dynamic int8: ``quantize_dynamic`` (QInt8 weights) of the exported FP32 RoBERTa (CPU only)
* intbert simulation (calibrated quant-mode IBertModel)
* intbert engine (``intbert.freeze``), 8-bit weights and 7-bit weights (``IBertConfig(weight_bit=7)``)

Prints the machine and a markdown table of ms per forward and ratios. Issue targets (goals, never
test assertions): CPU engine >= 1.0x onnxruntime dynamic int8 and >= 1.8x transformers FP32; GPU
engine >= 3x FP32 and >= 1.2x FP16 at B=32; >= 50x transformers' quant mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import transformers
from transformers import IBertConfig as HFIBertConfig  # the baseline we measure against (benchmark only)
from transformers import IBertModel as HFIBertModel
from transformers import RobertaConfig, RobertaModel

import intbert
from _machine import cpu_name  # benchmarks/_machine.py (scripts run from this folder)

SHAPE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)


CLOCK = time.perf_counter


def timed(fn, repeats: int, device: str) -> float:
    """Median ms of fn() after two warm-up calls (the first compiles the integer kernels for the shape)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            start = CLOCK()
            fn()
            sync()
            times.append(CLOCK() - start)
    return 1000 * statistics.median(times)


def ort_dynamic_int8(roberta: RobertaModel, ids: torch.Tensor, threads: int, workdir: str):
    """quantize_dynamic of the exported FP32 model, as a user would do it today."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = os.path.join(workdir, "roberta.onnx"), os.path.join(workdir, "roberta_int8.onnx")
    class LastHidden(torch.nn.Module):  # positional ids in, one tensor out: what the exporter traces
        def __init__(self):
            super().__init__()
            self.model = roberta

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    torch.onnx.export(LastHidden().eval(), (ids[:1],), fp32, input_names=["input_ids"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}}, opset_version=17, dynamo=False)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input_ids": x.numpy()})


def build_models(device: str, calib: list, skip_hf_quant: bool, layers: int):
    torch.manual_seed(0)
    SHAPE["num_hidden_layers"] = layers
    roberta = RobertaModel(RobertaConfig(**SHAPE), add_pooling_layer=False).eval()
    state = roberta.state_dict()
    sims = {}
    for bits in (8, 7):
        sim = intbert.IBertModel(intbert.IBertConfig(quant_mode=True, weight_bit=bits, **SHAPE), add_pooling_layer=False)
        sim.load_state_dict(state, strict=False)
        intbert.calibrate(sim, calib, method="minmax")
        sims[bits] = sim.eval().to(device)
    hf_quant = None
    if not skip_hf_quant:
        hf_quant = HFIBertModel(HFIBertConfig(quant_mode=True, **SHAPE), add_pooling_layer=False)
        hf_quant.load_state_dict(state, strict=False)
        hf_quant.train()  # transformers' I-BERT calibrates by train-mode forwards
        with torch.no_grad():
            for b in calib:
                hf_quant(**b)
        hf_quant = hf_quant.eval().to(device)
    return roberta.to(device), hf_quant, sims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=1, help="repeats for transformers' quant mode")
    parser.add_argument("--skip-hf-quant", action="store_true")
    parser.add_argument("--layers", type=int, default=12, help="fewer layers for a quick check of the script")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time (robust on a shared machine; meaningful with --threads 1)")
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    dev = args.device
    calib = [{"input_ids": torch.randint(3, SHAPE["vocab_size"], (8, args.seq), generator=torch.Generator().manual_seed(s))}
             for s in (1, 2)]
    roberta, hf_quant, sims = build_models(dev, calib, args.skip_hf_quant, args.layers)
    engines = {bits: intbert.freeze(sim) for bits, sim in sims.items()}
    with tempfile.TemporaryDirectory() as workdir:  # checkpoint sizes: the float model vs the frozen integer model
        roberta.save_pretrained(f"{workdir}/float")
        engines[8].save_pretrained(f"{workdir}/int")
        sizes = [os.path.getsize(f"{workdir}/{d}/model.safetensors") / 2**20 for d in ("float", "int")]
    print(f"checkpoint: float {sizes[0]:.1f} MiB, frozen integer {sizes[1]:.1f} MiB ({sizes[1] / sizes[0]:.1%})")
    print(f"device: {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else cpu_name()}), threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; engine backend {engines[8].encoder.backend().name}")
    print(f"RoBERTa-base shape, S={args.seq}; {'process CPU' if args.cpu_time else 'wall'} time, median of "
          f"{args.repeats} after two warm-ups "
          f"({args.slow_repeats} for transformers' quant mode)\n")

    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        ort_int8 = ort_dynamic_int8(roberta, calib[0]["input_ids"], args.threads, workdir) if dev == "cpu" else None
        for B in args.batches:
            ids = torch.randint(3, SHAPE["vocab_size"], (B, args.seq), generator=torch.Generator().manual_seed(B)).to(dev)
            for bits in engines:  # the engine's outputs are the simulation's, bit for bit
                with torch.inference_mode():
                    assert torch.equal(engines[bits](input_ids=ids).last_hidden_state,
                                       sims[bits](input_ids=ids).last_hidden_state)
            r = rows.setdefault(B, {})
            r["transformers RobertaModel FP32"] = timed(lambda: roberta(input_ids=ids), args.repeats, dev)
            if dev == "cuda":
                for dtype, name in ((torch.float16, "FP16"), (torch.bfloat16, "BF16")):
                    half = roberta.to(dtype)
                    r[f"transformers RobertaModel {name}"] = timed(lambda: half(input_ids=ids), args.repeats, dev)
                roberta.float()
            if hf_quant is not None:
                r["transformers IBertModel quant"] = timed(lambda: hf_quant(input_ids=ids), args.slow_repeats, dev)
            if ort_int8 is not None:
                r["onnxruntime dynamic int8"] = timed(lambda: ort_int8(ids), args.repeats, dev)
            r["intbert simulation"] = timed(lambda: sims[8](input_ids=ids), max(1, args.repeats // 2), dev)
            for bits, engine in engines.items():
                r[f"intbert engine, {bits}-bit weights"] = timed(lambda e=engine: e(input_ids=ids), args.repeats, dev)

    baselines = ["transformers RobertaModel FP32", "onnxruntime dynamic int8", "transformers RobertaModel FP16",
                 "transformers IBertModel quant"]
    for B, r in rows.items():
        present = [b for b in baselines if b in r]
        print(f"B={B}\n\n| model | ms | " + " | ".join(f"speedup vs {b}" for b in present) + " |")
        print("|---|---|" + "---|" * len(present))
        for name, ms in r.items():
            ratios = " | ".join(f"{r[b] / ms:.2f}x" for b in present)
            print(f"| {name} | {ms:.1f} | {ratios} |")
        print()


if __name__ == "__main__":
    main()
