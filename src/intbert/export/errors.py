"""The export's own failure: the written graph is not what the model says it should be."""


class ExportError(RuntimeError):
    """An exported graph failed a post-export check (Q/DQ nodes missing, no int8 kernels in onnxruntime).

    The message gives the counts found and expected and what to change; nothing was written at the target path.
    """
