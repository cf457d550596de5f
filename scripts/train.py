"""``python scripts/train.py ...`` is ``caco-jax train ...`` (caco_jax/cli/train.py);
kept for the paper's users."""

import sys

from caco_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
