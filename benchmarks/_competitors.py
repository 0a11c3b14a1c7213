"""The runtimes a user could pick instead of intbert's engine, as rows of the engine benchmarks (issue 10 §2).

Every contender is called like a transformers encoder, ``contender(**batch).last_hidden_state``, on a batch of int64
``input_ids`` / ``attention_mask`` / ``token_type_ids`` (right padding), so ``intbert.data.mean_pooled_embeddings``
and the timing loop treat them alike. A contender whose package is missing is skipped with the pip command; one that
fails to build is skipped with its error; both are printed, neither stops the benchmark.

The optional packages come from the ``bench`` extra, ``pip install -e '.[bench]'`` (openvino, nncf, ctranslate2; they
leave the pinned torch alone), on top of ``scripts/install.sh``.

Contenders built here, each from the same float model:

* onnxruntime FP32, and onnxruntime ``quantize_dynamic`` (QInt8 weights, per channel) of that FP32 graph;
* OpenVINO INT8: ``openvino.convert_model`` of the float model, ``nncf.quantize`` (post-training, transformer
  preset) calibrated on a few batches of the benchmark's kind of inputs, compiled for the CPU;
* CTranslate2 int8: ``TransformersConverter`` of the saved model, ``ctranslate2.Encoder(compute_type="int8")``;
  it is given each sentence without its padding (it packs real tokens itself);
* intbert's QDQ ONNX graph (``intbert.export_onnx`` of a calibrated QDQBertModel with the same weights, the CPU
  recipe of docs/export.md) in onnxruntime and in OpenVINO.

OpenVINO compiles with its own defaults (what a user gets); on a CPU with bfloat16 support (AMX, AVX512-BF16) that
default runs the float parts in bfloat16. The benchmark prints the precision each OpenVINO model compiled to.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PIP = {"openvino": "openvino", "nncf": "nncf", "ctranslate2": "ctranslate2", "onnxruntime": "onnxruntime"}


class Skip(Exception):
    """A contender that cannot run here; the message says why (and the pip command when a package is missing)."""


def need(*modules: str) -> None:
    """Import ``modules`` or raise Skip naming the pip command (the bench extra installs them all)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (pip install -e '.[bench]' or pip install "
                   f"{' '.join(PIP.get(m, m) for m in missing)})")


def versions(*packages: str) -> str:
    """'name version' for each installed distribution, 'name -' for a missing one."""
    out = []
    for name in packages:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


@dataclass
class Contender:
    """One row: ``run(batch) -> (B, S, H) float tensor``; ``note`` is printed under the table."""

    name: str
    run: Callable[[dict], torch.Tensor]
    note: str = ""
    max_runs: int | None = None  # slow rows (the simulation): timed this often at most

    def __call__(self, **batch) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.run(batch))


def build(contenders: list, name: str, builder: Callable[[], Contender | None]) -> None:
    """Append ``builder()``'s contender, or print why the row is skipped."""
    start = time.perf_counter()
    try:
        contender = builder()
    except Skip as why:
        print(f"skipped: {name}: {why}")
        return
    except Exception as error:  # a broken competitor costs its row, not the whole run
        print(f"skipped: {name}: failed to build: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3)
        return
    if contender is not None:
        contenders.append(contender)
        print(f"built: {contender.name} ({time.perf_counter() - start:.0f} s){': ' + contender.note if contender.note else ''}")


def full_batch(input_ids: torch.Tensor) -> dict:
    """Unpadded ids as the three graph inputs (token type 0 everywhere)."""
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids)}


def numpy_feed(batch: dict, names=INPUTS) -> dict:
    return {name: batch[name].numpy().astype(np.int64) for name in names}


# ----------------------------------------------------------------------------------------------------------------------
# torch (and anything called like a transformers model: the intbert simulation and engine)


def torch_contender(name: str, model, note: str = "", max_runs: int | None = None) -> Contender:
    def run(batch):
        with torch.inference_mode():
            return model(**batch).last_hidden_state
    return Contender(name, run, note, max_runs)


# ----------------------------------------------------------------------------------------------------------------------
# onnxruntime


class _HiddenOnly(torch.nn.Module):
    """The float model with the graph signature intbert's QDQ export uses (three int64 inputs, one output)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def export_float_onnx(model, path: str) -> str:
    """The float model as an FP32 ONNX graph (TorchScript exporter: seconds, where dynamo takes minutes at 12 layers)."""
    example = full_batch(torch.full((2, 8), 5, dtype=torch.long))  # ids past RoBERTa's pad id (1); token type 0
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_HiddenOnly(model).eval(), (), path, kwargs=example, input_names=list(INPUTS),
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=18, dynamo=False)
    return path


def ort_contender(name: str, path: str, threads: int, note: str = "") -> Contender:
    need("onnxruntime")
    from intbert.export.ort_kernels import make_session

    session = make_session(path, threads=threads)
    names = [i.name for i in session.get_inputs()]
    return Contender(name, lambda batch: torch.from_numpy(session.run(None, numpy_feed(batch, names))[0]), note)


def ort_dynamic_int8(fp32_path: str, path: str, threads: int) -> Contender:
    need("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8, per_channel=True)
    return ort_contender("onnxruntime dynamic int8 (per-channel)", path, threads,
                         "quantize_dynamic(QInt8 weights, per_channel=True) of the FP32 graph")


# ----------------------------------------------------------------------------------------------------------------------
# OpenVINO


#: Extra compile_model properties for every OpenVINO row; the scripts' --openvino-f32 sets the float parts to float32
#: (OpenVINO's CPU default is bfloat16 on CPUs with AMX-BF16 / AVX512-BF16).
OPENVINO_CONFIG: dict = {}


def _openvino_compile(model, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, **OPENVINO_CONFIG})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    output = compiled.output(0)

    def run(batch):
        request.infer(numpy_feed(batch, names))
        return torch.from_numpy(request.get_tensor(output).data.copy())

    return run, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def openvino_nncf_int8(model, calibration: list[dict], threads: int) -> Contender:
    """OpenVINO's own int8 path: convert the float model, nncf.quantize it on ``calibration`` (post-training)."""
    need("openvino", "nncf")
    import nncf
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        float_ov = ov.convert_model(_HiddenOnly(model).eval(), example_input=dict(calibration[0]))
    names = [i.get_any_name() for i in float_ov.inputs]
    dataset = nncf.Dataset(calibration, lambda batch: numpy_feed(batch, names))
    quantized = nncf.quantize(float_ov, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    run, precision = _openvino_compile(quantized, threads)
    return Contender("OpenVINO INT8 (NNCF post-training)", run,
                     f"nncf.quantize(model_type=TRANSFORMER) on {len(calibration)} batches; float parts in {precision}")


def openvino_onnx(name: str, path: str, threads: int, note: str = "") -> Contender:
    need("openvino")
    import openvino as ov

    run, precision = _openvino_compile(ov.Core().read_model(path), threads)
    return Contender(name, run, f"{note + '; ' if note else ''}openvino.Core().read_model + compile_model(CPU); "
                                f"float parts in {precision}")


# ----------------------------------------------------------------------------------------------------------------------
# CTranslate2


class _VocabularyOnly:
    """The converter reads only the vocabulary and unk token from a tokenizer; a random model has no tokenizer."""

    def __init__(self, size: int) -> None:
        self.size, self.unk_token = size, "<unk>"

    def get_vocab(self) -> dict[str, int]:
        return {"<unk>": 0, **{f"t{i}": i for i in range(1, self.size)}}


def ctranslate2_int8(model_dir: str, out_dir: str, threads: int, vocab_size: int | None = None) -> Contender:
    """``model_dir``: a saved transformers model (BertModel or RobertaModel); without a tokenizer there, pass
    ``vocab_size`` and a stand-in vocabulary of that size is used (ids are what the Encoder is fed)."""
    need("ctranslate2")
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            # ctranslate2 4.8.5 asserts config.position_embedding_type == "absolute"; transformers 5 dropped that
            # field from BertConfig / RobertaConfig (absolute positions are all they implement), so put it back.
            if not hasattr(model.config, "position_embedding_type"):
                model.config.position_embedding_type = "absolute"
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if vocab_size is not None:
                return _VocabularyOnly(vocab_size)
            return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Converter(model_dir).convert(out_dir, quantization="int8", force=True)
    encoder = ctranslate2.Encoder(out_dir, device="cpu", compute_type="int8", intra_threads=threads)

    def run(batch):
        lengths = batch["attention_mask"].sum(1).tolist()  # right padding: each row's real tokens come first
        ids = [row[:n] for row, n in zip(batch["input_ids"].tolist(), lengths)]
        types = [row[:n] for row, n in zip(batch["token_type_ids"].tolist(), lengths)]
        return torch.from_numpy(np.asarray(encoder.forward_batch(ids, token_type_ids=types).last_hidden_state))

    return Contender("CTranslate2 int8 (ctranslate2.Encoder)", run,
                     "TransformersConverter(quantization='int8'), compute_type='int8'; each sentence without its padding")


# ----------------------------------------------------------------------------------------------------------------------
# intbert's QDQ ONNX graph


def intbert_qdq_graph(float_state: dict, config, calibration: list[dict], path: str, target: str = "onnxruntime"):
    """A QDQBertModel with ``float_state`` (a BertModel's keys), quantized by QDQBERT's default recipe
    (``smooth-float-skip``: outliers smoothed, no residual-add Q/DQ, max calibration), exported with
    ``intbert.export_onnx``; returns the model."""
    need("onnxruntime", "onnx")
    from intbert import apply_recipe, export_onnx
    from intbert.models.qdqbert import QDQBertConfig, QDQBertModel

    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")
    qdq = QDQBertModel(QDQBertConfig(**{f: getattr(config, f) for f in fields}), add_pooling_layer=False)
    # A BertModel's or RobertaModel's keys (the same names); the quantizers' amax come from calibration.
    missing = [k for k in qdq.load_state_dict(float_state, strict=False).missing_keys if "_quantizer" not in k]
    if missing:
        raise ValueError(f"the float weights lack {missing[:3]}")
    qdq.eval()
    apply_recipe(qdq, calibration, "smooth-float-skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(qdq, path, target, dynamo=False)
    return qdq


def qdq_rows(contenders: list, float_state: dict, config, calibration: list[dict], folder, threads: int) -> list[str]:
    """intbert's QDQ graph as rows: the onnxruntime-target graph (uint8 activations at zero point 128) in onnxruntime
    and in OpenVINO, and the tensorrt-target graph (signed int8, zero point 0) in OpenVINO, which then runs the
    attention matmuls in int8 as well (docs/export.md, "Deploying the QDQ graph with OpenVINO"). Returns the names."""
    names = []
    for target, runtimes in (("onnxruntime", ("onnxruntime", "OpenVINO")), ("tensorrt", ("OpenVINO",))):
        path = os.path.join(folder, f"qdq-{target}.onnx")
        try:
            intbert_qdq_graph(float_state, config, calibration, path, target)
        except Skip as why:
            print(f"skipped: intbert QDQ ONNX ({target} target): {why}")
            continue
        except Exception as error:  # a broken export costs its rows, not the whole run
            print(f"skipped: intbert QDQ ONNX ({target} target): export failed: {type(error).__name__}: {error}")
            continue
        for runtime in runtimes:
            name = f"intbert QDQ ONNX ({target} target) in {runtime}"
            maker = ort_contender if runtime == "onnxruntime" else openvino_onnx
            before = len(contenders)
            build(contenders, name, lambda: maker(name, path, threads, "CPU recipe: no residual-add Q/DQ, max, GELU10"))
            names += [c.name for c in contenders[before:]]
    return names


# ----------------------------------------------------------------------------------------------------------------------
# timing


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved(work: dict[str, Callable[[], object]], repeats: int, clock: str, warmups: int = 1,
                max_runs: dict[str, int | None] | None = None) -> tuple[dict[str, float], dict[str, object]]:
    """Median ms of each ``work[name]()``; the contenders take turns run by run (the order rotates every round), so
    that a change in the machine's load hits them alike. Returns (medians, each contender's last result)."""
    tick = CLOCKS[clock]
    max_runs = max_runs or {}
    last = {}
    for name, fn in work.items():
        for _ in range(warmups if max_runs.get(name) is None else min(warmups, 1)):
            last[name] = fn()
    times = {name: [] for name in work}
    names = list(work)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            limit = max_runs.get(name)
            if limit is not None and len(times[name]) >= limit:
                continue
            start = tick()
            last[name] = work[name]()
            times[name].append(1000 * (tick() - start))
    return {name: statistics.median(t) for name, t in times.items()}, last
