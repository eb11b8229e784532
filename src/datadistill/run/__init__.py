"""A distillation run: its directory, logging and lock, the optimisation loop, timing, device, and the on-disk
layout of run and bench directories."""
