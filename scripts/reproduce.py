"""``python scripts/reproduce.py ...`` is ``caco-jax reproduce ...`` (caco_jax/cli/reproduce.py);
kept for the paper's users."""

import sys

from caco_jax.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
