"""The CUDA backend's fused Triton kernels give the reference backend's integers, proved on the CPU.

``TRITON_INTERPRET=1`` runs a Triton kernel on CPU tensors (numpy executes each program). Triton reads the
flag when a kernel is decorated, i.e. when ``intbert.engine.backends.triton_*`` is first imported, and a
process keeps the kernels it built then. So the kernels run in a child process started with the flag
(this file run as a script): it writes every case's result to a file, and the tests here compare each with
the reference backend computed in this process with ``torch.equal``. The flag never reaches the pytest
process or any other test.

Shapes are small and awkward: the interpreter's 32 x 32 tiles leave tails in M, N, K and in the key blocks;
head size 15; lengths 1, 17, 33; padding holes and a fully masked sequence; batch 2; 7- and 8-bit weights;
per-tensor and per-channel requantization; the 47-bit i-GELU requantization; a constant LayerNorm row.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _engine_parts import int8, layernorm, linear, requant  # noqa: E402
from _sizes import randint  # noqa: E402

from intbert.engine.backends import ReferenceBackend  # noqa: E402
from intbert.engine.modules import GELUConstants, ResidualRequant, SoftmaxConstants  # noqa: E402
from intbert.engine.tokens import TokenLayout  # noqa: E402
from intbert.quantization import intops  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
#: The interpreter of triton 3.6 (the one of the GPU machines' torch 2.11 image) stops on these kernels: a range over
#: a runtime bound inside a nested jit function raises TypeError there (its kernels compile for sm_90 all the same).
MIN_INTERPRETER = (3, 9)


def _triton_version() -> tuple[int, int]:
    import importlib.metadata

    major, minor = importlib.metadata.version("triton").split(".")[:2]
    return int(major), int(minor)
#: The child process runs every case once; this bounds it (20-30 s on 2 shared cores, so the tests that need it are
#: marked slow: ``-m 'not slow'`` skips them in development; CI runs them).
WORKER_TIMEOUT_S = 600


# ----------------------------------------------------------------------------------------------------------------------
# Cases: name -> be -> integer tensor; the same builders (fixed seeds) run in both processes.

def _small_bias(lin, seed):
    """Biases of +-2^12 (not _engine_parts' 2^20), so the GEMM's part of each output is not drowned by the bias."""
    lin.bias.copy_(randint(seed, -(2**12), 2**12, lin.bias.shape))
    return lin


def _linear_requant(weight_bit, per_channel, input_bits):
    def run(be):
        lin = _small_bias(linear(1, 40, 40, weight_bit), 30)
        rq = requant(2, 40 if per_channel else 1, 8, input_bits, (37, 41))
        return be.linear_requant(int8(3, 2, 17, 40), lin, rq)
    return run


def _qkv(be):
    lins = [_small_bias(linear(s, 30, 30), s + 30) for s in (4, 5, 6)]
    rqs = [requant(7, 30, 8, 31, (37, 41)), requant(8, 1, 8, 31, (37, 41)), requant(9, 30, 8, 31, (37, 41))]
    return torch.cat(be.linear_requant_many(int8(10, 2, 17, 30), list(zip(lins, rqs))), dim=-1)


def _gelu(weight_bit):
    def run(be):
        lin = linear(11, 72, 40, weight_bit)
        scale = torch.rand(72, generator=torch.Generator().manual_seed(12)) * 1e-3 + 2**-20
        g = GELUConstants(*intops.gelu_constants(scale)[:3])
        rq1 = requant(13, 72, 8, intops.GELU_OUTPUT_BITS, (40, 63))
        rq2 = requant(14, 1, 8, 31, (30, 31))
        return be.linear_gelu_requant(int8(15, 2, 17, 40), lin, g, rq1, rq2)
    return run


def _residual_layernorm(n, constant_row, small_rows=False):
    """small_rows: sums h of a few bits (std ~2^6), so that one unit of the row mean moves the normalised n by
    ~2^24 and the int8 output by ~1/2: a rounding slip in the mean or the variance shows (with 20-bit rows the
    output requantization divides it away)."""
    def run(be):
        lin = linear(16, n, 72)
        x, res = int8(17, 2, 17, 72), int8(18, 2, 17, n)
        if constant_row:  # row (0, 0): zero input, equal bias and residual -> a constant LayerNorm row (std 1)
            lin.bias.fill_(12345)
            x[0, 0] = 0
            res[0, 0] = 7
        if small_rows:
            add = ResidualRequant(requant(19, n, 22, 31, (40, 42)), requant(20, 1, 22, 31, (32, 33)))
            out = requant(22, n, 8, 31, (53, 55))
        else:
            add = ResidualRequant(requant(19, n, 22, 31, (25, 35)), requant(20, 1, 22, 31, (20, 25)))
            out = requant(22, n, 8, 31, (55, 59))
        return be.linear_residual_layernorm(x, lin, res, add, layernorm(21, n), out)
    return run


def _attention(L, mask, score_scale, per_channel):
    """B = 2, 2 heads of 15; mask: None, "holes" (random padding holes + a fully masked sequence), "tail"."""
    def run(be):
        B, heads, H = 2, 2, 30
        q, k, v = (int8(s, B, L, H) for s in (23, 24, 25))
        if mask is None:
            attention_mask = None
        elif mask == "holes":
            attention_mask = (randint(26, 0, 4, (B, L)) > 0).long()
            attention_mask[1] = 0  # a sequence with no kept key at all: zero probabilities, zero context
        else:
            attention_mask = torch.ones(B, L, dtype=torch.long)
            attention_mask[0, L // 2:] = 0
        tokens = TokenLayout.padded(torch.zeros(B, L, dtype=torch.long), attention_mask)
        sm = SoftmaxConstants(8, **intops.softmax_constants(torch.tensor([score_scale])))
        rq = requant(27, H if per_channel else 1, 8, 31, (36, 42))
        return be.attention_requant(q, k, v, tokens, heads, sm, rq)
    return run


def _requantize(per_channel, input_bits):
    def run(be):
        wide = randint(28, -(2**21), 2**21, (2, 17, 30)).to(torch.int32)
        return be.requantize(wide, requant(29, 30 if per_channel else 1, 8, input_bits, (42, 48)))
    return run


def _embed(be):
    """Tables of 50 words, 2 types, 40 positions (hidden 30), per-channel and per-tensor adds onto 16 bits, ids (2, 17)."""
    from intbert.engine.model import IntEmbeddings

    H = 30
    emb = IntEmbeddings(int8(41, 50, H), int8(42, 2, H), int8(43, 40, H),
                        add_token_type=ResidualRequant(requant(44, H, 16, 8, (24, 26)), requant(45, 1, 16, 8, (24, 26))),
                        add_position=ResidualRequant(requant(46, 1, 16, 16, (30, 31)), requant(47, H, 16, 8, (24, 26))),
                        ln=layernorm(48, H), out=requant(49, H, 8, 31, (53, 56)))
    ids, types, pos = randint(50, 0, 50, (2, 17)), randint(51, 0, 2, (2, 17)), randint(52, 0, 40, (2, 17))
    return be.embed(emb, ids, types, pos)


CASES = {
    "linear_requant_w8_per_channel": _linear_requant(8, True, 31),
    "linear_requant_w7_per_tensor_32bit_input": _linear_requant(7, False, 32),
    "qkv_one_gemm": _qkv,
    "linear_gelu_requant_w8": _gelu(8),
    "linear_gelu_requant_w7": _gelu(7),
    "residual_layernorm_n30": _residual_layernorm(30, False),
    "residual_layernorm_n70_constant_row": _residual_layernorm(70, True),
    "residual_layernorm_n40_small_rows": _residual_layernorm(40, False, small_rows=True),
    "attention_L1": _attention(1, "holes", 3e-4, True),
    "attention_L17_holes": _attention(17, "holes", 3e-4, False),
    "attention_L33_holes_pre_shift": _attention(33, "holes", 1e-6, True),
    "attention_L33_no_mask": _attention(33, None, 3e-4, False),
    "attention_L33_tail_padding": _attention(33, "tail", 2e-3, True),
    "embed": _embed,
    "requantize_per_channel": _requantize(True, 31),
    "requantize_per_tensor_32bit_input": _requantize(False, 32),
}


# ----------------------------------------------------------------------------------------------------------------------
# A whole encoder: a tiny frozen I-BERT with head size 15, batch 2, padding.

def _tiny_encoder():
    import intbert
    from intbert.engine import freeze

    from test_ibert_modeling import batch, build, calibrated, tiny_config

    config = tiny_config(True, "d8", hidden_size=30, num_attention_heads=2)
    model = calibrated(build(intbert.IBertModel, config), make=lambda s: batch(s, b=2, seq=17, pad_last=5))
    return freeze(model, backend="reference").encoder


def _encoder_inputs():
    from test_ibert_modeling import batch

    x = batch(40, b=2, seq=17, pad_last=5)
    x["attention_mask"][1, 3] = 0  # a hole inside a sequence too
    return x


def _encode(encoder, be):
    encoder._backends[(encoder.backend_name, str(encoder.device))] = be  # run this backend on the CPU tensors
    x = _encoder_inputs()
    q, states, _ = encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"], output_hidden_states=True)
    return torch.stack([q] + states)


# ----------------------------------------------------------------------------------------------------------------------
# The child process (TRITON_INTERPRET=1): python tests/test_triton_kernels.py OUT ENCODER_FILE

def _worker(out_path: str, encoder_path: str) -> None:
    from intbert.engine.backends.cuda import CUDABackend
    from intbert.engine.backends import triton_gemm

    if not triton_gemm.INTERPRET:
        raise SystemExit("the worker must run with TRITON_INTERPRET=1")
    be = CUDABackend(kernels="triton")
    results = {}
    for name, run in CASES.items():
        try:
            results[name] = run(be)
        except Exception as exc:  # reported by the case's own test, with the traceback text
            import traceback

            results[name] = "".join(traceback.format_exception(exc))
    try:
        results["encoder"] = _encode(torch.load(encoder_path, weights_only=False), be)
    except Exception as exc:
        import traceback

        results["encoder"] = "".join(traceback.format_exception(exc))
    torch.save(results, out_path)


# ----------------------------------------------------------------------------------------------------------------------
# The child process that compiles for a GPU (no TRITON_INTERPRET): python tests/test_triton_kernels.py --compile ARCH
# The interpreter does not check what only the GPU compiler does (a plain global int read inside a kernel is a
# NameError there, int8 tl.dot needs K >= 32, ...); Triton compiles to a cubin without a GPU (ptxas ships in the wheel).

#: Pointer arguments that are not int64 constants, by name.
_POINTERS = {"x_ptr": "*i8", "w_ptr": "*i8", "bias_ptr": "*i32", "out_ptr": "*i8", "res_ptr": "*i8", "h_ptr": "*i32",
             "q_ptr": "*i8", "k_ptr": "*i8", "v_ptr": "*i8", "keep_ptr": "*i8", "word_ptr": "*i8", "type_ptr": "*i8",
             "posemb_ptr": "*i8"}


def _compile_kernels(arch: int) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from intbert.engine.backends import triton_attention, triton_embed, triton_gemm, triton_requant

    gemm_tile = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128)
    kernels = [
        (triton_gemm._linear_requant_kernel, dict(M_STRIDE=1, BITS=8, INPUT_BITS=31, **gemm_tile)),
        (triton_gemm._linear_gelu_requant_kernel, dict(G_STRIDE=1, M1_STRIDE=1, M2_STRIDE=0, BITS1=8, IN1=47, BITS2=8,
                                                       IN2=31, **gemm_tile)),
        (triton_gemm._linear_residual_layernorm_kernel, dict(MA_STRIDE=1, MB_STRIDE=0, M_STRIDE=1, INA=31, INB=31,
                                                             ADD_BITS=22, BITS=8, INPUT_BITS=31, BLOCK_M=16,
                                                             BLOCK_N=128, BLOCK_K=128)),
        (triton_attention._attention_requant_kernel, dict(HAS_KEEP=True, M_STRIDE=1, OUT_BIT=8, BITS=8, INPUT_BITS=31,
                                                          ONE_BLOCK=True, BLOCK_M=64, BLOCK_N=128, BLOCK_D=64)),
        (triton_attention._attention_requant_kernel, dict(HAS_KEEP=False, M_STRIDE=0, OUT_BIT=8, BITS=8, INPUT_BITS=31,
                                                          ONE_BLOCK=False, BLOCK_M=32, BLOCK_N=64, BLOCK_D=32)),
        (triton_requant._requant_kernel, dict(M_STRIDE=1, BITS=8, INPUT_BITS=31, BLOCK=1024)),
        (triton_embed._embed_kernel, dict(SA1=1, SB1=0, SA2=0, SB2=1, M_STRIDE=1, INA1=8, INB1=8, BITS1=16, INA2=16,
                                          INB2=8, BITS2=16, BITS=8, INPUT_BITS=31, BLOCK_M=8, BLOCK_N=256)),
    ]
    failed = 0
    for fn, constexprs in kernels:
        signature = {name: "constexpr" if name in constexprs else
                     _POINTERS.get(name, "*i64") if name.endswith("_ptr") else "i32" for name in fn.arg_names}
        try:
            triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "num_stages": 2})
            print(f"compiled {fn.__name__} for sm_{arch}", flush=True)
        except Exception as exc:  # every kernel is tried; the exit code says whether one failed
            failed += 1
            print(f"FAILED {fn.__name__} for sm_{arch}: {type(exc).__name__}: {exc}", flush=True)
    raise SystemExit(1 if failed else 0)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install 'intbert[triton]'); the Triton kernels cannot be checked")
    if _triton_version() < MIN_INTERPRETER:
        pytest.skip(f"triton {'.'.join(map(str, _triton_version()))}'s interpreter cannot run these kernels; "
                    f"needs >= {'.'.join(map(str, MIN_INTERPRETER))} (pip install 'intbert[triton]')")
    folder = tmp_path_factory.mktemp("triton")
    encoder_path = folder / "encoder.pt"
    torch.save(_tiny_encoder(), encoder_path)
    out = folder / "results.pt"
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, __file__, str(out), str(encoder_path)], env=env, capture_output=True,
                          text=True, timeout=WORKER_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"the interpreter worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    results = torch.load(out, weights_only=False)
    results["encoder_path"] = encoder_path
    return results


def _assert_same(got, want, what):
    if isinstance(got, str):
        pytest.fail(f"{what}: the Triton kernel raised:\n{got}")
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        first = tuple(bad[0].tolist())
        pytest.fail(f"{what}: {len(bad)} of {want.numel()} integers differ; first at {first}: "
                    f"triton {got[first].item()}, reference {want[first].item()}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_triton_kernel_equals_the_reference_backend(interpreted, name):
    _assert_same(interpreted[name], CASES[name](ReferenceBackend()), name)


@pytest.mark.slow
def test_tiny_encoder_on_triton_kernels_equals_the_reference_at_every_layer_boundary(interpreted):
    """Embeddings on the compiled path, then every layer on the Triton kernels (Q/K/V as one GEMM), head size 15,
    padding at the end and inside a sequence: the int8 states of every boundary equal the reference's."""
    reference = _encode(torch.load(interpreted["encoder_path"], weights_only=False), ReferenceBackend())
    _assert_same(interpreted["encoder"], reference, "encoder")


def test_attention_cases_cover_a_sequence_with_no_kept_key():
    """The 'holes' cases mask every key of sequence 1: its context integers are all 0 (no division by zero)."""
    out = CASES["attention_L17_holes"](ReferenceBackend())
    assert bool((out[1] == 0).all()) and bool((out[0] != 0).any())


@pytest.mark.slow
def test_interpreter_flag_does_not_leak_into_this_process(interpreted):
    """The worker ran under the flag; this process did not get it, nor kernels built by the interpreter."""
    assert os.environ.get("TRITON_INTERPRET", "0") != "1" or pytest.skip("the whole run is under TRITON_INTERPRET=1")
    gemm = sys.modules.get("intbert.engine.backends.triton_gemm")
    assert gemm is None or not gemm.INTERPRET


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90])
def test_every_kernel_compiles_for_an_nvidia_gpu_without_one(arch):
    """Hopper (H100/H200; sm_80 compiled too when this was written): front end, TTGIR, LLVM, PTX and ptxas, in a
    child process without the interpreter flag."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install 'intbert[triton]')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, __file__, "--compile", str(arch)], env=env, capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert done.stdout.count("compiled ") == 7


if __name__ == "__main__":
    if sys.argv[1] == "--compile":
        _compile_kernels(int(sys.argv[2]))
    else:
        _worker(sys.argv[1], sys.argv[2])
