"""``python scripts/adapt.py ...`` is ``caco-jax adapt ...`` (caco_jax/cli/adapt.py)."""

import sys

from caco_jax.cli.adapt import main

if __name__ == "__main__":
    sys.exit(main())
