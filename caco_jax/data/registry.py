"""The datasets ``config.data.name`` selects: each knows how to build itself and open its splits.

A dataset is one function registered with :func:`register`: ``(config, workdir) -> {'train',
'validation', 'test'}`` Sources, building its TFDS data first when the config says where the raw
files are. Its class names come from its build (``Source.class_names``) and flow into the model
head, the losses, the metrics and the reports. ``ham10000`` (any official layout, or synthetic
data for the demo) and ``folder`` (one sub-folder of images per class) are the two here.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable
from typing import Any

from caco_jax.data import offline, records
from caco_jax.errors import ConfigError

log = logging.getLogger("caco_jax")

Opener = Callable[[Any, pathlib.Path], dict[str, records.Source]]


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    open: Opener


DATASETS: dict[str, Dataset] = {}


def register(name: str, description: str) -> Callable[[Opener], Opener]:
    """Registers ``open(config, workdir) -> splits`` as dataset ``name``."""

    def wrap(fn: Opener) -> Opener:
        DATASETS[name] = Dataset(name, description, fn)
        return fn

    return wrap


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"unknown data.name {name!r}; datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def split_options(config: Any) -> dict[str, Any]:
    """The ``records.split_source`` keywords a run's config fixes: split rule, seed, offline copies
    (configs saved before ``data.offline`` existed had none)."""
    copies = config.data.get("offline")
    return {
        "split_by": config.data.split_by,
        "seed": config.data.split_seed,
        "copies": offline.OfflineCopies.from_config(copies) if copies else None,
        "holdout_source": config.data.get("holdout_source", ""),  # configs before it had none
    }


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


def open_data(config: Any, workdir: pathlib.Path) -> dict[str, records.Source]:
    """The three splits of the dataset ``config.data.name`` names (built first if needed)."""
    return get(config.data.name).open(config, pathlib.Path(workdir))


@register(
    "ham10000",
    "HAM10000 from any official layout (Kaggle, Dataverse, ISIC 2018), or synthetic "
    "HAM10000-like images (data.synthetic_images > 0)",
)
def _open_ham10000(config: Any, workdir: pathlib.Path) -> dict[str, records.Source]:
    from caco_jax.data import ham10000, synthetic

    data_dir, manual_dir = data_location(config, workdir)
    # (with synthetic_images > 0, data_location always gives a manual_dir)
    if (
        config.data.synthetic_images > 0
        and manual_dir is not None
        and not (manual_dir / "HAM10000_metadata.csv").is_file()
    ):
        log.info("writing %d synthetic HAM10000-like images to %s", config.data.synthetic_images, manual_dir)
        synthetic.write_manual_dir(manual_dir, num_images=config.data.synthetic_images, seed=config.seed)
    if manual_dir is not None:
        ham10000.prepare(manual_dir, data_dir, image_size=config.data.build_size, progress=config.progress_bar)
    return ham10000.open_splits(data_dir, image_size=config.data.build_size, **split_options(config))


@register("folder", "your own images, one sub-folder per class (data.manual_dir)")
def _open_folder(config: Any, workdir: pathlib.Path) -> dict[str, records.Source]:
    from caco_jax.data import folder

    data_dir, manual_dir = data_location(config, workdir)
    if manual_dir is None or config.data.synthetic_images > 0:
        raise ConfigError(
            "data.name=folder reads your own images: set --config.data.manual_dir=/path/to/folder "
            "(one sub-folder per class) and leave data.synthetic_images at 0"
        )
    built = folder.prepare(manual_dir, data_dir, image_size=config.data.build_size, progress=config.progress_bar)
    return records.split_source(records.open_source(built), **split_options(config))
