import os

import pytest
import torch

# A compiled twin (intbert.quantization.fused) that fails to compile raises in tests instead of falling back to
# its eager definition: the fallback would let every twin test compare the eager definition with itself. Set
# before intbert is imported (fused reads it once); subprocesses (CLI tests) inherit it.
os.environ["INTBERT_COMPILE_STRICT"] = "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
