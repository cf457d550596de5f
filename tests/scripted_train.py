"""``caco-jax train`` whose validation BACC per epoch is scripted (kill-point tests, tests/test_train.py).

    CACO_TEST_VAL_BACC=0.3,0.6,0.5 python tests/scripted_train.py --config ... --workdir ...
    CACO_TEST_UNKNOWN_FREE_SPACE=1 CACO_TEST_FILL_DISK_AT=4 python tests/scripted_train.py ...

Everything else is the real command; only the score that picks the best epoch is replaced, so
a test decides which epochs write new best weights (here: 1 and 2, not 3). With
``CACO_TEST_UNKNOWN_FREE_SPACE`` the free space is reported unknown, so a save is never refused
before writing: on a full disk it fails mid-write. With ``CACO_TEST_FILL_DISK_AT=N`` the disk is
filled, as another program would, once the checkpoints before step N have committed and just before
checkpoint N is written (all but 64 kB), so the test does not depend on how a filesystem counts blocks.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from caco_jax.training import run as run_module

SCRIPT_ENV = "CACO_TEST_VAL_BACC"
UNKNOWN_FREE_SPACE_ENV = "CACO_TEST_UNKNOWN_FREE_SPACE"
FILL_DISK_ENV = "CACO_TEST_FILL_DISK_AT"


def fill_disk(directory: Any, leave: int = 64 * 1024) -> None:
    """Writes a file beside ``directory`` until its filesystem is full, then frees ``leave`` bytes."""
    import errno
    import pathlib

    filler = pathlib.Path(directory).parent / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    os.truncate(filler, max(0, filler.stat().st_size - leave))


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
    if os.environ.get(FILL_DISK_ENV):
        from caco_jax.training import checkpoints as ckpts

        at, save = int(os.environ[FILL_DISK_ENV]), ckpts.Checkpointer.save

        def save_after_filling(self: Any, step: int, *args: Any, **kwargs: Any) -> None:
            if step == at:
                self.wait()  # the earlier checkpoint has committed
                fill_disk(self.directory.parent)
            save(self, step, *args, **kwargs)

        ckpts.Checkpointer.save = save_after_filling
    from caco_jax.cli import common, train as train_command

    # started as the command is: under the preferred memory allocator where one is installed
    return common.main(train_command, argv, entry=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
