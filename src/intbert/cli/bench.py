"""``intbert bench``: latency and throughput of float vs quantized vs exported, measured side by side in one run.

Every model runs the same inputs (random token ids of one length, no padding, from a fixed seed) at each batch
size, after warm-up, on one device with one thread setting; the table gives median milliseconds, sentences per
second and the speedup over FP32 (FP32 ms / model ms). Timings are this machine's, named in the header; only
the ratios travel. A PNG plot of latency by batch size and a JSON file of every timing go to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import deploy
from .arguments import add_device_option, int_list, non_negative_int, positive_int, resolve_device
from .artifacts import FORMATS, load_quantized, source_checkpoint
from .checkpoints import inspect_checkpoint
from .console import progress_enabled, table
from .errors import Unavailable, UsageError
from .paths import check_writable_dir

FLOAT_NAME = "FP32 (PyTorch)"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_line(device: str) -> str:
    import torch

    if device == "cuda":
        where = f"cuda ({torch.cuda.get_device_name()})"
    else:
        where = f"cpu ({cpu_name()}), threads {torch.get_num_threads()}"
    return f"device: {where}, torch {torch.__version__}, python {platform.python_version()}"


def inputs_for(config, batch: int, seq_len: int, device: str, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    low = min(config.vocab_size - 1, 5)  # past the special tokens of BERT-style vocabularies
    ids = torch.randint(low, config.vocab_size, (batch, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def torch_runner(model, config, device: str) -> Callable[[int, int], Callable[[], object]]:
    import torch

    def make(batch: int, seq_len: int):
        inputs = inputs_for(config, batch, seq_len, device)

        def call():
            with torch.no_grad():
                return model(**inputs)
        return call
    return make


def add_parser(commands) -> None:
    p = commands.add_parser(
        "bench", help="latency / throughput of float vs quantized vs exported, with a plot",
        description="Time DIR's float source, its quantized model (the frozen integer engine for I-BERT, fake-quant "
                    "PyTorch for QDQBERT) and its ONNX export in onnxruntime, on the same inputs in one run. Prints "
                    "ratios to FP32; writes bench.json and latency.png to --out.")
    p.add_argument("dir", metavar="DIR", help="a folder written by intbert quantize or intbert qat")
    p.add_argument("--float", dest="float_model", metavar="MODEL",
                   help="float checkpoint to compare with (default: the source named in DIR's report); it must hold "
                        "the weights DIR was quantized from")
    p.add_argument("--allow-other-float", action="store_true",
                   help="time a float model whose weights are not DIR's source (a warning instead of an error)")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32], metavar="N,N,...",
                   help="batch sizes (default: 1,8,32)")
    p.add_argument("--seq-len", type=positive_int, default=128, metavar="N", help="tokens per input (default: 128)")
    p.add_argument("--warmup", type=non_negative_int, default=2, metavar="N",
                   help="untimed calls per setting (default: 2)")
    p.add_argument("--iters", type=positive_int, default=10, metavar="N", help="timed calls per setting (default: 10)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads (default: torch's)")
    p.add_argument("--onnx", type=Path, metavar="PATH", help="time this exported file (from intbert export "
                   "DIR --target onnxruntime) instead of exporting DIR again")
    p.add_argument("--no-onnx", action="store_true", help="skip the exported (ONNX) column")
    p.add_argument("--out", type=Path, metavar="DIR", help="where bench.json and latency.png go (default: DIR/bench)")
    add_device_option(p)
    p.set_defaults(run=run)


def _models(args, ckpt, device: str, scratch: Path) -> tuple[dict, dict, object]:
    """{name: runner factory} in table order, {name: why it is missing} for the columns that cannot run, and the
    quantized model's config."""
    from .loading import load_float

    source = source_checkpoint(ckpt, args.float_model, args.allow_other_float)
    float_model = load_float(source, ckpt.head).to(device)
    quantized = load_quantized(ckpt, device)
    config = quantized.config
    runners = {FLOAT_NAME: torch_runner(float_model, config, device)}
    skipped = {}
    runners[f"INT8 ({FORMATS[ckpt.report['format']]})"] = torch_runner(quantized, config, device)
    if args.no_onnx:
        return runners, skipped, config
    if device != "cpu":
        skipped["ONNX"] = "the exported model is timed in onnxruntime on the CPU (run with --device cpu)"
    else:
        try:
            onnx_path = args.onnx
            if onnx_path is None:
                onnx_path = scratch / "model.onnx"
                deploy.export_onnx(quantized, onnx_path, "onnxruntime")
            session = deploy.OnnxModel(onnx_path, config, args.threads)
            runners["INT8 (ONNX, onnxruntime)"] = torch_runner(session, config, "cpu")
        except Unavailable as err:
            skipped["ONNX"] = str(err)
    return runners, skipped, config


def plot(results: list[dict], path: Path, title: str) -> str | None:
    """latency.png: median ms by batch size, one line per model (log-log). Returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display on servers
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return "matplotlib is not installed (pip install 'intbert[demo]')"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        ax.plot([r["batch"] for r in rows], [r["median_ms"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency, median ms")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_checkpoint(args.dir)
    if not ckpt.quantized:
        raise UsageError(f"{ckpt.path} has no quantization_report.json: make it with intbert quantize or intbert qat")
    out = args.out or ckpt.path / "bench"
    check_writable_dir(out, "--out")
    device = resolve_device(args.device)
    if args.onnx is not None and not args.no_onnx:
        deploy.check_onnx_file(args.onnx, "--onnx")
    import torch
    from tqdm.auto import tqdm

    from .inference import model_max_length, timed

    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="intbert-bench-") as scratch:
        runners, skipped, config = _models(args, ckpt, device, Path(scratch))
        seq_len = min(args.seq_len, model_max_length(config))
        results = []
        settings = [(b, name) for b in args.batch_sizes for name in runners]
        for batch, name in tqdm(settings, desc="bench", disable=not progress_enabled()):
            times = timed(runners[name](batch, seq_len), args.warmup, args.iters, sync)
            median = statistics.median(times)
            results.append({"model": name, "batch": batch, "seq_len": seq_len, "median_ms": median,
                            "min_ms": min(times), "sentences_per_s": batch / median * 1e3})
    for r in results:
        base = next(x for x in results if x["batch"] == r["batch"] and x["model"] == FLOAT_NAME)
        r["speedup_vs_fp32"] = base["median_ms"] / r["median_ms"]
    header = device_line(device)
    print(header)
    print(f"model: {ckpt.path} ({ckpt.head}), sequence length {seq_len}, median of {args.iters} after {args.warmup} "
          "warm-up calls")
    rows = [["batch", "model", "ms", "sentences/s", "x FP32"]]
    rows += [[str(r["batch"]), r["model"], f"{r['median_ms']:.2f}", f"{r['sentences_per_s']:.1f}",
              f"{r['speedup_vs_fp32']:.2f}"] for r in results]
    print(table(rows, align="rlrrr"))
    for name, why in skipped.items():
        print(f"{name}: not measured: {why}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"device": header, "model": str(ckpt.path), "results": results,
                                                "skipped": skipped}, indent=1) + "\n", encoding="utf-8")
    why = plot(results, out / "latency.png", f"{ckpt.path.name}: seq {seq_len}\n{header}")
    print(f"wrote {out / 'bench.json'}" + (f" and {out / 'latency.png'}" if why is None else f" (no plot: {why})"))
    return 0
