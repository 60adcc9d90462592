"""vLLM's piecewise capture shape: the decode step split at attention, each piece of each batch
size captured as a graph of its own, into one shared pool, attention run eagerly between the
pieces.

vLLM compiles the model with torch.compile, splits the FX graph at every attention op, and
captures each piece for every capture size (CUDAGraphMode.PIECEWISE; FULL_AND_PIECEWISE adds
full graphs for pure decode). For an 8B model of 32 layers and 67 sizes that is 33 pieces a step
and over 2,000 small graphs. Here the same cut is made by hand on the reference step
(decode.py): piece 0 is the embedding and layer 0 up to its attention; piece i the rest of layer
i-1 and layer i up to its attention; the last piece the rest of the last layer, the final norm
and the LM head. Pieces hand their results on through static buffers (the residual stream and
the attention's query in, the attention's output back), as vLLM's do.

`split_every`: attention is eager at every split_every-th layer and captured inside a piece at
the others (1: vLLM's cut, 33 pieces for 32 layers; larger values make fewer, bigger pieces of
the same kernels: the bench fits restore time against graph and node counts with them).
`compiled`: each piece through torch.compile (Inductor's Triton kernels), as vLLM's pieces are.

Graph keys are "<batch>/<piece>" ("8/05"): a batch size is ready when all its pieces are, and
LOAD restores batch sizes in serving order (foundry_trace.archive.keys).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from foundry_trace.bench.capture import OUTPUT_NAME, CapturedStep
from foundry_trace.bench.workloads.decode import DecodeEngine, shape_of

if TYPE_CHECKING:
    from foundry_trace.restore import Restored
    from foundry_trace.save.recording import Recording


class PiecewiseEngine(DecodeEngine):
    def __init__(
        self, *, preset: str = "llama8b", split_every: int = 1, compiled: bool = False, attention: str = "math",
        layers: int | None = None, batch_sizes: tuple[int, ...] | None = None, device: str = "cuda",
    ) -> None:
        super().__init__(shape_of(preset, layers, batch_sizes), attention=attention, device=device)
        s = self.shape
        if split_every < 1:
            raise ValueError(f"split_every={split_every}: attention is eager every 1 or more layers")
        self.split_every, self.compiled = split_every, compiled
        # The layers whose attention runs eagerly between pieces; piece p ends before the p-th.
        self.cuts = tuple(index for index in range(s.layers) if index % split_every == 0)
        dtype = self.embedding.dtype
        self.residual = torch.zeros(s.max_batch, s.hidden, device=device, dtype=dtype)
        self.query = torch.zeros(s.max_batch, s.heads, s.head_dim, device=device, dtype=dtype)
        self.attended = torch.zeros(s.max_batch, s.heads * s.head_dim, device=device, dtype=dtype)
        self._pieces: dict[int, Callable[[int], torch.Tensor | None]] = {}

    @property
    def pieces(self) -> int:
        return len(self.cuts) + 1

    def describe(self) -> str:
        way = "torch.compile'd pieces" if self.compiled else "pieces"
        return (
            f"piecewise capture of the {super().describe()}: {self.pieces} {way} a step (attention eager at every "
            f"{self.split_every}{'st' if self.split_every == 1 else 'th'} layer), {self.pieces * len(self.batch_sizes)} graphs"
        )

    def key(self, batch: int, piece: int) -> str:
        return f"{batch}/{piece:0{len(str(self.pieces - 1))}d}"

    def run_piece(self, batch: int, piece: int) -> torch.Tensor | None:
        """Piece `piece` of the step: from the eager attention before it (or the embedding) to the
        eager attention after it (or the logits, which the last piece returns)."""
        rotary = self.rotary(batch)
        if piece == 0:
            x, first = self.embed(batch), 0
        else:
            cut = self.cuts[piece - 1]
            x = self.after_attention(cut, self.residual[:batch], self.attended[:batch], batch)
            first = cut + 1
        last = self.cuts[piece] if piece < len(self.cuts) else self.shape.layers
        mask = self.mask(batch) if last > first else None
        for index in range(first, last):  # layers whose attention this piece captures
            x, q = self.before_attention(index, x, batch, rotary)
            x = self.after_attention(index, x, self.attend(index, q, batch, mask), batch)
        if piece == len(self.cuts):
            return self.head(x)
        x, q = self.before_attention(last, x, batch, rotary)
        self.residual[:batch].copy_(x)
        self.query[:batch].copy_(q)
        return None

    def attend_between(self, batch: int, piece: int) -> None:
        """The eager attention after piece `piece` (not the last), as vLLM runs it."""
        self.attended[:batch].copy_(self.attend(self.cuts[piece], self.query[:batch], batch, self.mask(batch)))

    def _piece(self, piece: int) -> Callable[[int], torch.Tensor | None]:
        if piece not in self._pieces:
            run = functools.partial(self.run_piece, piece=piece)
            self._pieces[piece] = torch.compile(run, dynamic=True, fullgraph=True) if self.compiled else run
        return self._pieces[piece]

    def capture_step(self, batch: int, pool: object, recording: Recording | None = None) -> CapturedStep:
        """Each piece captured as a graph of its own (one pool for all), attention run eagerly
        between them; compiled pieces run once first, so that nothing compiles inside a capture."""
        if self.compiled:
            for piece in range(self.pieces):
                self._piece(piece)(batch)
                if piece < len(self.cuts):
                    self.attend_between(batch, piece)
        graphs, output = [], None
        for piece in range(self.pieces):
            graph = torch.cuda.CUDAGraph()
            key = self.key(batch, piece)
            with recording.key(key) if recording is not None else contextlib.nullcontext():
                with torch.cuda.graph(graph, pool=pool):
                    output = self._piece(piece)(batch)
            graphs.append(graph)
            if piece < len(self.cuts):
                self.attend_between(batch, piece)
        assert output is not None
        if recording is not None:
            recording.add_output(self.key(batch, self.pieces - 1), OUTPUT_NAME, output)
        return CapturedStep(batch, graphs, output, self._replayer(batch, [g.replay for g in graphs]), self.key(batch, self.pieces - 1))

    def restored_step(self, restored: Restored, batch: int) -> tuple[Callable[[], None], torch.Tensor]:
        graphs = [restored[self.key(batch, piece)] for piece in range(self.pieces)]
        return self._replayer(batch, [g.replay for g in graphs]), graphs[-1].outputs[OUTPUT_NAME]

    def _replayer(self, batch: int, replays: list[Callable[[], None]]) -> Callable[[], None]:
        def replay() -> None:
            for piece, launch in enumerate(replays):
                launch()
                if piece < len(self.cuts):
                    self.attend_between(batch, piece)

        return replay
