"""Where and how code runs: devices, process groups, progress display.

- ``devices``: choosing the compute device (never a silent fallback), available memory.
- ``distributed``: torchrun / DistributedDataParallel support; rank 0 writes.
- ``progress``: the training display (progress bar, epoch lines, results table).

May import: ``galmerge.errors`` only.
"""
