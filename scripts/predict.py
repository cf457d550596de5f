"""``python scripts/predict.py ...`` is ``caco-jax predict ...`` (caco_jax/cli/predict.py);
kept for the paper's users."""

import sys

from caco_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
