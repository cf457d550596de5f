"""``python -m caco_jax <command>`` is ``caco-jax <command>``."""

import sys

from caco_jax.cli.main import main

sys.exit(main())
