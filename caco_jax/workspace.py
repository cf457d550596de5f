"""A run's workdir: its saved config, and the data the config points at (built on first use)."""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import ml_collections

from caco_jax.data import folder, ham10000, offline, pipeline, synthetic

# config.data.name -> what it reads: HAM10000 (any official layout, or synthetic) or a
# folder-per-class dataset of the user's own (caco_jax.data.folder).
DATASETS: tuple[str, ...] = ("ham10000", "folder")

log = logging.getLogger("caco_jax")


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """Writes ``workdir/config.json`` (what evaluate.py / predict.py rebuild the model from)."""
    path = workdir / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)
    return path


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {workdir} the --workdir of a training run (scripts/train.py)?"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def data_location(config: Any, workdir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(TFDS data_dir, manual_dir to build from or None) for a config.

    With ``data.synthetic_images > 0`` both live in the workdir: synthetic
    HAM10000-like JPEGs are written to ``workdir/synthetic`` and built into
    ``workdir/tfds`` (no download anywhere).
    """
    if config.data.synthetic_images > 0:
        return workdir / "tfds", workdir / "synthetic"
    manual = pathlib.Path(config.data.manual_dir).expanduser().resolve() if config.data.manual_dir else None
    return pathlib.Path(config.data.data_dir).expanduser().resolve(), manual


def split_options(config: Any) -> dict[str, Any]:
    """The ``open_splits`` keywords a run's config fixes: split rule, seed, offline copies
    (configs saved before ``data.offline`` existed had none)."""
    copies = config.data.get("offline")
    return {"split_by": config.data.split_by, "seed": config.data.split_seed,
            "copies": offline.OfflineCopies.from_config(copies) if copies else None}


def open_data(config: Any, workdir: pathlib.Path) -> dict[str, pipeline.Source]:
    """Builds the dataset if needed (synthetic or from ``data.manual_dir``) and opens the three splits.

    Each split knows the dataset's class names (``source.class_names``).
    """
    if config.data.name not in DATASETS:
        raise ValueError(f"unknown data.name {config.data.name!r}; expected one of {DATASETS}")
    data_dir, manual_dir = data_location(config, workdir)
    if config.data.name == "folder":
        if manual_dir is None or config.data.synthetic_images > 0:
            raise ValueError("data.name=folder reads your own images: set --config.data.manual_dir=/path/to/folder "
                             "(one sub-folder per class) and leave data.synthetic_images at 0")
        built = folder.prepare(manual_dir, data_dir, image_size=config.data.build_size, progress=config.progress_bar)
        return pipeline.open_splits(data_dir, builder=built, **split_options(config))
    if config.data.synthetic_images > 0 and not (manual_dir / "HAM10000_metadata.csv").is_file():
        log.info("writing %d synthetic HAM10000-like images to %s", config.data.synthetic_images, manual_dir)
        synthetic.write_manual_dir(manual_dir, num_images=config.data.synthetic_images, seed=config.seed)
    if manual_dir is not None:
        ham10000.prepare(manual_dir, data_dir, image_size=config.data.build_size, progress=config.progress_bar)
    return pipeline.open_splits(data_dir, image_size=config.data.build_size, **split_options(config))
