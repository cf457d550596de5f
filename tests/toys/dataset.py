"""A toy dataset: three classes of coloured shapes (tests/test_data_folder.py's), written on first
use into data.manual_dir (or the workdir) and built as a folder dataset."""

from __future__ import annotations

import pathlib
from typing import Any

from caco_jax.data import registry

NAME = "toy_shapes"


@registry.register(
    NAME,
    "three classes of coloured shapes, written on first use (tests only)",
    images="toy shapes",
    class_names=("bar", "disc", "plain"),
)
def open_toy_shapes(config: Any, workdir: pathlib.Path):
    from caco_jax.data import folder, records
    from test_data_folder import write_folders

    data_dir, manual_dir = registry.data_location(config, workdir)
    root = manual_dir or pathlib.Path(workdir) / "toy_shapes"
    if not root.is_dir():
        write_folders(root, per_class=20)
    built = folder.prepare(root, data_dir, image_size=config.data.build_size, progress=False)
    return records.split_source(records.open_source(built), **registry.split_options(config))
