"""The ``intbert`` command line (layer 4: it may use every other part of intbert).

One module per command (``quantize``, ``qat``, ``evaluate`` for ``eval``, ``bench``, ``export``, ``predict``,
``demo``), each with ``add_parser`` and ``run``; ``main`` wires them to argparse. Shared steps live in small
modules of their own: ``checkpoints`` (what a folder holds), ``paths`` (where the commands write, checked
first), ``loading`` (float and quantized-simulation models, tokenizers), ``convert`` (BERT/RoBERTa heads to
I-BERT), ``ptq`` (calibration methods), ``artifacts`` (the folder a quantized model is saved in), ``deploy``
(the integer engine and the ONNX exporter), ``inference`` (batching, metrics, timing), ``training`` (Trainer).

Two tiers, so that ``--help`` and usage errors answer at once: the command modules and the helpers their
checks use (``arguments``, ``checkpoints``, ``paths``, ``textfile``, ``artifacts``, ``deploy``, ``console``)
import neither torch nor transformers at module level; ``loading``, ``convert``, ``ptq``, ``report``,
``inference`` and ``training`` do, and are imported inside the functions that do the work.
"""

from .main import main

__all__ = ["main"]
