"""``python scripts/export.py ...`` is ``caco-jax export ...`` (caco_jax/cli/export.py);
kept for the paper's users."""

import sys

from caco_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
