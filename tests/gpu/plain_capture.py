"""A program that knows nothing of Foundry: it captures two CUDA graphs with plain PyTorch."""

import torch

x = torch.randn(256, 256, device="cuda")
graphs = []
for scale in (1.0, 2.0):
    (x @ x * scale).sum()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = (x @ x * scale).sum()
    graphs.append((graph, y))
print("captured", len(graphs))
