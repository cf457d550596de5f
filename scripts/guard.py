"""``python scripts/guard.py ...`` is ``caco-jax guard ...`` (caco_jax/cli/guard.py)."""

import sys

from caco_jax.cli.guard import main

if __name__ == "__main__":
    sys.exit(main())
