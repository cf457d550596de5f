"""``python scripts/convert_torchvision.py ...`` is ``caco-jax convert ...`` (caco_jax/cli/convert.py)."""

import sys

from caco_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
