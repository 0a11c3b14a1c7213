"""CUDA graphs for the integer encoder: one captured graph per (batch, length) bucket, replayed per call.

At BERT sizes a layer is a handful of short kernels (with the fused Triton kernels: Q/K/V GEMM, attention,
dense + LayerNorm, requantize, FFN up, FFN down + LayerNorm = 6 per layer, 73 for RoBERTa-base with the
embeddings), and at small batches their launch overhead is most of the time. A CUDA graph replays them all
with one launch.

A graph has static shapes and static memory, so a batch is padded up to its bucket: extra positions get
the pad token and attention_mask 0 and extra sequences are fully masked. Padding changes no integer on a
real position (a masked key gets probability 0 and adds nothing to the context; tokens.py), and the
result is cut back to (B, L). Position ids are computed from the real ids before padding.

What capture needs from the backend (``CUDABackend(kernels="triton")`` has it): no host synchronisation
inside ``encode`` (constants are read by the kernels from device memory, not with ``.item()``), no
``torch.compile`` recompiling during capture, and every Triton kernel compiled and autotuned before
capture: the warm-up runs do that on a side stream. With ``kernels="torch"`` the ``fused_ops`` chains are
``torch.compile`` code: the warm-up compiles them and the capture records the kernels they launch (untested).

Twin: ``encoder.encode`` itself (tests/test_engine_gpu.py compares replays with it and with the CPU reference).
"""

from __future__ import annotations

import torch

#: Bucket edges: a batch is padded to the first edge >= its size (a size above the last edge is its own bucket).
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_LENGTHS = (16, 32, 64, 128, 256, 512)
#: Eager runs before capture: the first compiles and autotunes, the second checks nothing is left to compile.
WARMUP_RUNS = 2


def pad_to_bucket(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                  position_ids: torch.Tensor, batch: int, length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """(B, L) inputs -> (batch, length) inputs that give the same integers on [:B, :L] (any device).

    Extra positions: the pad id, attention_mask 0, token type 0, position pad_token_id (RoBERTa's position of a pad
    token); extra sequences are fully masked. A missing mask becomes ones on the real (B, L) block.
    """
    B, L = input_ids.shape
    dev = input_ids.device
    out = {"input_ids": torch.full((batch, length), pad_token_id, dtype=torch.long, device=dev),
           "attention_mask": torch.zeros((batch, length), dtype=torch.long, device=dev),
           "token_type_ids": torch.zeros((batch, length), dtype=torch.long, device=dev),
           "position_ids": torch.full((batch, length), pad_token_id, dtype=torch.long, device=dev)}
    out["input_ids"][:B, :L] = input_ids
    out["attention_mask"][:B, :L] = 1 if attention_mask is None else attention_mask
    if token_type_ids is not None:
        out["token_type_ids"][:B, :L] = token_type_ids
    out["position_ids"][:B, :L] = position_ids
    return out


def _bucket(n: int, edges) -> int:
    for edge in edges:
        if n <= edge:
            return edge
    return n


class GraphedEncoder:
    """Replays captured CUDA graphs of ``encoder.encode`` (an ``IntegerIBertModel`` on a CUDA device).

    ``encode(input_ids, attention_mask=None, token_type_ids=None, position_ids=None)`` returns the int8 hidden
    states (B, L, H), equal to ``encoder.encode(...)[0]``; hidden states of every layer and attention
    probabilities are not captured (call the encoder itself for them). The first call of a bucket captures
    it (warm-up included, seconds); later calls copy the inputs into the bucket's static buffers and replay.
    """

    def __init__(self, encoder, batches=DEFAULT_BATCHES, lengths=DEFAULT_LENGTHS):
        if encoder.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the encoder on a CUDA device, not {encoder.device}; move it with "
                             ".to('cuda')")
        self.encoder = encoder
        self.batches = tuple(sorted(batches))
        self.lengths = tuple(sorted(lengths))
        max_len = encoder.config.max_position_embeddings - encoder.config.pad_token_id - 1
        self.lengths = tuple(min(L, max_len) for L in self.lengths)
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._pool = torch.cuda.graph_pool_handle()  # buckets share one pool: replays never overlap

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """The (batch, length) buckets captured so far."""
        return sorted(self._graphs)

    def _capture(self, B: int, L: int):
        dev = self.encoder.device
        pad = self.encoder.config.pad_token_id
        static = {
            "input_ids": torch.full((B, L), pad, dtype=torch.long, device=dev),
            "attention_mask": torch.zeros((B, L), dtype=torch.long, device=dev),
            "token_type_ids": torch.zeros((B, L), dtype=torch.long, device=dev),
            "position_ids": torch.full((B, L), pad, dtype=torch.long, device=dev),
        }
        static["attention_mask"][:, 0] = 1  # warm-up inputs: one real token per row

        def run():
            return self.encoder.encode(static["input_ids"], static["attention_mask"], static["token_type_ids"],
                                       static["position_ids"])[0]

        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = run()
        return graph, static, out

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        from ...models.ibert.modeling_ibert import create_position_ids_from_input_ids

        B, L = input_ids.shape
        if position_ids is None:
            position_ids = create_position_ids_from_input_ids(input_ids, self.encoder.config.pad_token_id)
        key = (_bucket(B, self.batches), _bucket(L, self.lengths))
        if key not in self._graphs:
            self._graphs[key] = self._capture(*key)
        graph, static, out = self._graphs[key]
        padded = pad_to_bucket(input_ids, attention_mask, token_type_ids, position_ids, *key,
                               self.encoder.config.pad_token_id)
        for name, t in padded.items():
            static[name].copy_(t)
        graph.replay()
        # The buckets share one memory pool: another bucket's graph may keep its intermediates where this output
        # lies (they were free when it was captured), so its next replay would overwrite it; hand out a copy.
        return out[:B, :L].clone()
