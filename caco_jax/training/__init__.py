"""Training: the flat loop (loop.py), jitted steps, losses, checkpoints, data parallelism, run logs."""
