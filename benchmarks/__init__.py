"""jaxdd's benchmarks; run each from the repository root as `python -m benchmarks.<name>`.

`harness` is what they share (configs, machine header, timing, memory, results files);
`torch_reference` is the PyTorch reference implementation the speed benchmark compares with.
The benchmarks import only these two and jaxdd, never each other.
"""
