"""``caco-jax train`` whose validation BACC per epoch is scripted (kill-point tests, tests/test_train.py).

    CACO_TEST_VAL_BACC=0.3,0.6,0.5 python tests/scripted_train.py --config ... --workdir ...

Everything else is the real command; only the score that picks the best epoch is replaced, so
a test decides which epochs write new best weights (here: 1 and 2, not 3).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from caco_jax.training import run as run_module

SCRIPT_ENV = "CACO_TEST_VAL_BACC"


def main(argv: list[str]) -> int:
    scores = [float(x) for x in os.environ[SCRIPT_ENV].split(",")]
    real = run_module.Run.evaluate

    def evaluate(self: Any, params: Any, batch_stats: Any, source: Any, epoch: int) -> dict[str, Any]:
        return real(self, params, batch_stats, source, epoch) | {"bacc": scores[epoch]}

    run_module.Run.evaluate = evaluate
    from caco_jax.cli.train import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
