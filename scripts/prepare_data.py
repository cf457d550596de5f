"""``python scripts/prepare_data.py ...`` is ``caco-jax prepare-data ...`` (caco_jax/cli/prepare_data.py);
kept for the paper's users."""

import sys

from caco_jax.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
