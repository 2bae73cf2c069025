"""Speed benchmarks: pokediff against the reference implementations, in one process on the same inputs.

    python -m benchmarks.train_throughput     # training images/s, FLOPs/image, MFU, peak memory
    python -m benchmarks.sampling             # DDIM-50 (and our DPM-Solver++(2M)-20) images/s

Results and the exact commands: benchmarks/RESULTS.md.
"""
