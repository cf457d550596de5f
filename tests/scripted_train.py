"""``caco-jax train`` whose validation BACC per epoch is scripted (kill-point tests, tests/test_train.py).

    CACO_TEST_VAL_BACC=0.3,0.6,0.5 python tests/scripted_train.py --config ... --workdir ...
    CACO_TEST_UNKNOWN_FREE_SPACE=1 python tests/scripted_train.py ...

Everything else is the real command; only the score that picks the best epoch is replaced, so
a test decides which epochs write new best weights (here: 1 and 2, not 3). With
``CACO_TEST_UNKNOWN_FREE_SPACE`` the free space is reported unknown, so a save is never refused
before writing: on a small disk it fails mid-write, as when another program fills the disk.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from caco_jax.training import run as run_module

SCRIPT_ENV = "CACO_TEST_VAL_BACC"
UNKNOWN_FREE_SPACE_ENV = "CACO_TEST_UNKNOWN_FREE_SPACE"


def main(argv: list[str]) -> int:
    if os.environ.get(SCRIPT_ENV):
        scores = [float(x) for x in os.environ[SCRIPT_ENV].split(",")]
        real = run_module.Run.evaluate

        def evaluate(self: Any, params: Any, batch_stats: Any, source: Any, epoch: int) -> dict[str, Any]:
            return real(self, params, batch_stats, source, epoch) | {"bacc": scores[epoch]}

        run_module.Run.evaluate = evaluate
    if os.environ.get(UNKNOWN_FREE_SPACE_ENV):  # for the check before a checkpoint; messages still say it
        from caco_jax.runs import faults
        from caco_jax.training import checkpoints

        checkpoints.faults = types.SimpleNamespace(**vars(faults) | {"free_bytes": lambda path: None})
    from caco_jax.cli import common, train as train_command

    # started as the command is: under the preferred memory allocator where one is installed
    return common.main(train_command, argv, entry=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
