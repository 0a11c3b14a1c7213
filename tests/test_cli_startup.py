"""The ``intbert`` command answers at once: ``--help``, ``CMD --help`` and usage errors never import torch or
transformers (seconds on a quiet machine, over 30 on a loaded one), and a Ctrl-C while they load is one line.

Each check runs a fresh interpreter (this one has torch loaded already) and looks at ``sys.modules``, not at
the clock: what is imported is what costs the time, and it does not depend on the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "numpy", "onnx", "onnxruntime", "safetensors", "tqdm")
COMMANDS = ["demo", "quantize", "qat", "eval", "bench", "export", "predict"]

#: Runs main(ARGV) and prints the exit code and the heavy modules it imported, as JSON on the last line.
_PROBE = """
import json, sys
from intbert.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(%r))
print(json.dumps({"code": code, "heavy": heavy}))
""" % (HEAVY,)


def _probe(*args) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True, timeout=300)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def test_intbert_help_imports_neither_torch_nor_transformers():
    result = _probe("--help")
    assert result["code"] == 0 and result["heavy"] == [], result


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_imports_neither_torch_nor_transformers(command):
    result = _probe(command, "--help")
    assert result["code"] == 0 and result["heavy"] == [], result


@pytest.mark.parametrize("args", [
    ["quantize", "MODEL", "--scheme", "int4"],  # argparse: a bad choice
    ["eval", "/no/such/folder", "--data", "x.txt"],  # a missing folder, found by the command itself
    ["qat", "M", "--train", "f", "--eval", "f", "--scheme", "qdq", "--out", "o", "--lr", "nan"],
], ids=["bad choice", "missing folder", "nan option"])
def test_usage_errors_do_not_wait_for_torch(args):
    result = _probe(*args)
    assert result["code"] == 2 and result["heavy"] == [], result
    assert result["stderr"].count("\n") == 1


def test_ctrl_c_while_torch_loads_is_one_line_with_code_130(tmp_path):
    """A stand-in torch whose import is interrupted, as a Ctrl-C during the seconds torch takes to load would be."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    calib = tmp_path / "calib.txt"
    calib.write_text("a sentence\n")
    env = {"PYTHONPATH": str(fake.parent), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "intbert.cli", "quantize", model, "--scheme", "qdq", "--calib-data",
                           calib, "--out", tmp_path / "out"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["intbert quantize: error: interrupted"]
    assert not (tmp_path / "out").exists()


def test_the_cli_modules_import_torch_only_inside_functions():
    """The light half of the command line (what ``main`` imports to build its parser) stays light as it grows."""
    probe = ("import sys, intbert.cli.main; "
             f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "[]", proc.stderr

