"""``python scripts/benchmark.py ...`` is ``caco-jax benchmark ...`` (caco_jax/cli/benchmark.py);
kept for the paper's users."""

import sys

from caco_jax.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
