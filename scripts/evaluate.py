"""``python scripts/evaluate.py ...`` is ``caco-jax evaluate ...`` (caco_jax/cli/evaluate.py);
kept for the paper's users."""

import sys

from caco_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
