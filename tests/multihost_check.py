"""One process of a two-process training run on localhost (run by tests/test_train.py).

    python tests/multihost_check.py PROCESS_ID PORT DATA_DIR WORKDIR

Both processes train the tiny model through ``train_and_evaluate`` with
``distributed=True``: one CPU device each, gloo collectives, each reading only its
half of every global batch.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from caco_jax.training.loop import train_and_evaluate  # noqa: E402
from multihost_config import config  # noqa: E402


def main() -> None:
    process_id, port, data_dir, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = config(data_dir)
    c.distributed = True
    c.cluster.coordinator_address = f"localhost:{port}"
    c.cluster.num_processes = 2
    c.cluster.process_id = process_id
    result = train_and_evaluate(c, workdir)
    print(f"process {process_id}: {result['status']} at step {result['step']}", flush=True)


if __name__ == "__main__":
    main()
