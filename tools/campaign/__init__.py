"""A fixed wall-clock slot of GPU time, spent in order: environment, a lean benchmark, one paper-recipe run
alone, then the pending runs of the reproduction grids side by side; packed into one archive that the CPU
side merges into its runs and docs (``tools/gpu_campaign.py``).

Modules: ``plan`` (which runs are pending, in which order, and whether one fits the time left), ``procs``
(the clock, the log, subprocesses with deadlines), ``phases`` (the four phases), ``figures`` (what the
probe run and the benchmark measured), ``archive`` (what the results archive holds, written in
parts, read back to resume), ``merge`` (the CPU side: runs and docs), ``carry`` (what a bare GPU machine
needs), ``envinfo`` (the environment, run as its own process). How to use it: README.md beside this file.
"""
