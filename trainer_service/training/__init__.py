"""The training engine: runs one job's training loop (single process or a torchrun/DDP rank)."""
