"""The ``intbert`` command line (layer 4: it may use every other part of intbert).

One module per command (``quantize``, ``qat``, ``evaluate`` for ``eval``, ``bench``, ``export``, ``predict``,
``demo``), each with ``add_parser`` and ``run``; ``main`` wires them to argparse. Shared steps live in small
modules of their own: ``checkpoints`` (what a folder holds, loading it), ``convert`` (BERT/RoBERTa heads to
I-BERT), ``ptq`` (calibration methods), ``artifacts`` (the folder a quantized model is saved in), ``deploy``
(the integer engine and the ONNX exporter), ``inference`` (batching, metrics, timing), ``training`` (Trainer).
"""

from .main import main

__all__ = ["main"]
