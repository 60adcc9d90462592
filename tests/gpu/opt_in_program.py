"""A serving-style program that opts in to Foundry at its restore point and works either way:

    FOUNDRY_MODE=save FOUNDRY_ARCHIVE=a.foundry python opt_in_program.py   captures (and saves)
    FOUNDRY_MODE=load FOUNDRY_ARCHIVE=a.foundry python opt_in_program.py   restores instead

Its graphs write a static output buffer, as engines' graphs do; it prints that buffer's sums.
"""

import torch

import foundry_trace

torch.manual_seed(0)
weights = torch.randn(256, 256, device="cuda")
output = torch.zeros(2, device="cuda")  # the engine's static output buffer
restored = foundry_trace.restore_point()
if restored is None:
    graphs = []
    for index, scale in enumerate((1.0, 2.0)):
        output[index] = (weights @ weights * scale).sum()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output[index] = (weights @ weights * scale).sum()
        graphs.append(graph)
    replay = [graph.replay for graph in graphs]
else:
    replay = [restored[key].replay for key in ("0", "1")]
output.zero_()
for run in replay:
    run()
torch.cuda.synchronize()
print("restored" if restored is not None else "captured", output.tolist())
