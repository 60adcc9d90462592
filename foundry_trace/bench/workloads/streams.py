"""A step that exercises the graph nodes other than kernels: its capture forks a second stream and
joins it back, with an external event recorded on one stream and waited on by the other (event
record and event wait nodes), a device-to-device copy (memcpy node) and a driver memset (memset
node) inside the graph, between cuBLAS and PyTorch kernels. The copy and the memset write memory
the capture allocates (the graph arena), as library workspaces are, so prefetch() can build
these graphs before the engine exists."""

from __future__ import annotations

import math
import struct

import torch
import torch.nn.functional as F
from cuda.bindings import driver

from foundry_trace._driver import call
from foundry_trace.bench.capture import OneGraphPerStep

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
MEMSET_VALUE = 0.5  # what the memset writes into every element of its buffer


class StreamsEngine(OneGraphPerStep):
    def __init__(
        self, *, hidden: int = 1024, vocab: int = 8192, attention: str = "default", layers: int | None = None,
        batch_sizes: tuple[int, ...] | None = None, seed: int = 0,
    ) -> None:
        if attention != "default":
            raise ValueError(f"attention {attention!r}: the streams workload has no attention; leave it out")
        self.batch_sizes = tuple(batch_sizes or BATCH_SIZES)
        self.layers = layers or 2  # matmuls per branch
        generator = torch.Generator(device="cuda").manual_seed(seed)

        def weight(*dims: int) -> torch.Tensor:
            return torch.randn(*dims, device="cuda", dtype=torch.bfloat16, generator=generator) / math.sqrt(dims[-1])

        max_batch = max(self.batch_sizes)
        self.embedding = weight(vocab, hidden)
        self.main_weights = [weight(hidden, hidden) for _ in range(self.layers)]
        self.side_weights = [weight(hidden, hidden) for _ in range(self.layers)]
        self.lm_head = weight(vocab, hidden)
        self.tokens = torch.zeros(max_batch, device="cuda", dtype=torch.long)
        self.hidden = hidden
        self.side = torch.cuda.Stream()
        self.side_done = torch.cuda.Event(external=True)  # captured as event record / wait nodes
        self.vocab = vocab

    def describe(self) -> str:
        return (
            f"two-stream step (fork/join, external event record + wait, memcpy, memset), {self.layers} matmuls per "
            f"stream, hidden {self.hidden}, {len(self.batch_sizes)} batch sizes"
        )

    def warm_up(self) -> None:
        self.step(1)

    def prepare(self, batch: int, seed: int) -> None:
        generator = torch.Generator(device="cuda").manual_seed(seed)
        self.tokens[:batch].copy_(torch.randint(0, self.vocab, (batch,), generator=generator, device="cuda"))

    def step(self, batch: int) -> torch.Tensor:
        main = torch.cuda.current_stream()
        x = F.embedding(self.tokens[:batch], self.embedding)
        self.side.wait_stream(main)  # fork: the side stream joins the capture
        with torch.cuda.stream(self.side):
            branch = x
            for w in self.side_weights:
                branch = torch.tanh(F.linear(branch, w))
            self.side_done.record(self.side)
        main.wait_stream(self.side)  # join (a graph edge)
        self.side_done.wait(main)  # and the external wait on the recorded event
        y = x
        for w in self.main_weights:
            y = F.gelu(F.linear(y, w))
        staged = torch.empty_like(y)
        staged.copy_(y)  # same dtype, contiguous: a device-to-device memcpy
        filled = torch.empty(batch, self.hidden, device="cuda", dtype=torch.float32)
        bits = struct.unpack("<I", struct.pack("<f", MEMSET_VALUE))[0]
        call(driver.cuMemsetD32Async, filled.data_ptr(), bits, filled.numel(), driver.CUstream(main.cuda_stream))
        return F.linear((staged.float() + filled).to(torch.bfloat16) + branch, self.lm_head).float()
