"""``python scripts/serve.py ...`` is ``caco-jax serve ...`` (caco_jax/cli/serve.py);
kept for the paper's users."""

import sys

from caco_jax.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
