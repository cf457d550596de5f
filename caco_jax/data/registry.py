"""The datasets ``config.data.name`` selects: each knows how to build itself, open its splits, and the
facts about it that the rest of the package asks for.

A dataset is one function registered with :func:`register`: ``(config, workdir) -> {'train',
'validation', 'test'}`` Sources, building its TFDS data first when the config says where the raw
files are, plus its entry's facts (:class:`Dataset`): what its images are, its fixed class names
(else they come from the build, ``Source.class_names``, and flow into the model head, the losses,
the metrics and the reports), the per-image metadata its builds carry, the subgroups the reports
break its figures down by, and the paper's figures measured on it. ``ham10000`` (any official
layout, or synthetic data for the demo) and ``folder`` (one sub-folder of images per class) are the
two here. No module outside ``caco_jax/data`` tests a dataset's name: they read its entry.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from caco_jax.data import offline, paper
from caco_jax.data.classes import CLASS_NAMES, META_FIELDS
from caco_jax.errors import ConfigError
from caco_jax.registry import Registry

if TYPE_CHECKING:  # records imports TFDS: only the openers need it, when they run
    from caco_jax.data import records

log = logging.getLogger("caco_jax")

Opener = Callable[[Any, pathlib.Path], "dict[str, records.Source]"]
# (run config, TFDS data_dir, manual_dir to build from first or None) -> (the set's images, the split it is)
ExternalOpener = Callable[[Any, pathlib.Path, "pathlib.Path | None"], "tuple[records.Source, str]"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered dataset: how to open it, and its facts."""

    name: str
    description: str  # one line for listings: what it is and where it is read from
    open: Opener
    images: str = ""  # what its images are, for the web page; {field}s are config.data's (images_of)
    class_names: tuple[str, ...] | None = None  # a fixed vocabulary, or None: the build's
    # Per-image metadata its builds store beside the label (Source.meta, saved with the predictions).
    metadata_fields: tuple[str, ...] = ()
    # The subgroup dimensions the reports break its figures down by (caco_jax.evaluation.subgroups).
    subgroups: tuple[str, ...] = ()
    # (attention, loss, ImageNet-pretrained) -> the paper's figures measured on this dataset.
    paper_results: Mapping[tuple[str, str, bool], paper.PaperRow] = dataclasses.field(default_factory=dict)
    # Whether an earlier build in data.data_dir (caco-jax prepare-data) opens it without data.manual_dir.
    prebuilt: bool = False
    # Other sets of its classes, evaluated apart from a run's splits (caco-jax evaluate --dataset NAME).
    external: Mapping[str, ExternalOpener] = dataclasses.field(default_factory=dict)

    def images_of(self, config: Any) -> str:
        """What a run's images were, in words: ``images`` with its ``{field}``s filled from ``config.data``."""
        return self.images.format_map(dict(config.data.items()))

    def paper_row(self, attention: str, loss: str, pretrained: bool = True) -> paper.PaperRow | None:
        """The paper's figures for this configuration on this dataset, if it reports one."""
        return self.paper_results.get((attention, loss, pretrained))


def _check(name: str, entry: Dataset) -> None:
    if set(entry.metadata_fields) & {"image", "label", "image_id", "lesion_id"}:
        raise TypeError(f"dataset {name!r}: metadata_fields name per-image metadata, not the build's own fields")
    if entry.class_names is not None and len(set(entry.class_names)) != len(entry.class_names):
        raise TypeError(f"dataset {name!r}: class_names must be distinct")


DATASETS: Registry[Dataset] = Registry("data.name", _check)


def register(name: str, description: str, **facts: Any) -> Callable[[Opener], Opener]:
    """Registers ``open(config, workdir) -> splits`` as dataset ``name``, with its facts (the fields of
    :class:`Dataset` after ``open``)."""

    def wrap(fn: Opener) -> Opener:
        DATASETS.register(name, Dataset(name, description, fn, **facts))
        return fn

    return wrap


def known(name: str) -> Dataset | None:
    """The entry of a saved run's dataset, or None where this installation registers no such name
    (a run trained with a dataset registered elsewhere is still readable)."""
    return DATASETS[name] if name in DATASETS else None


def external_names() -> tuple[str, ...]:
    """The external sets of every registered dataset (``caco-jax evaluate --dataset``), in registration order."""
    return tuple(dict.fromkeys(name for _, entry in DATASETS.items() for name in entry.external))


def open_external(
    config: Any, name: str, data_dir: pathlib.Path, manual_dir: pathlib.Path | None = None
) -> tuple[records.Source, str]:
    """(the images, the split it is) of external set ``name`` of the run's dataset, built from ``manual_dir``
    first when given; a ConfigError when the run's dataset has no such set."""
    entry = known(config.data.name)
    sets = entry.external if entry is not None else {}
    if name not in sets:
        raise ConfigError(
            f"--dataset {name}: the run's dataset {config.data.name!r} has no such external set"
            + (f" (its sets: {', '.join(sets)})" if sets else " (it has none)")
        )
    source, split = sets[name](config, pathlib.Path(data_dir), manual_dir)
    return source.with_fov_crop(bool(config.data.fov_crop)), split


def split_options(config: Any) -> dict[str, Any]:
    """The ``records.split_source`` keywords a run's config fixes: split rule, seed, offline copies,
    held-out source."""
    return {
        "split_by": config.data.split_by,
        "seed": config.data.split_seed,
        "copies": offline.OfflineCopies.from_config(config.data.offline),
        "holdout_source": config.data.holdout_source,
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
    """The three splits of the dataset ``config.data.name`` names (built first if needed), their images
    cropped to the field of view when decoded where ``data.fov_crop`` says so (runs saved before the
    option had none)."""
    splits = DATASETS[config.data.name].open(config, pathlib.Path(workdir))
    fov_crop = bool(config.data.get("fov_crop", False))
    return {name: source.with_fov_crop(fov_crop) for name, source in splits.items()} if fov_crop else splits


def _isic2018(name: str) -> ExternalOpener:
    """An ISIC 2018 Task 3 set (``isic2018_test``, ``isic2018_validation``) at the run's build size."""

    def open_set(config: Any, data_dir: pathlib.Path, manual_dir: pathlib.Path | None) -> tuple[records.Source, str]:
        from caco_jax.data import ham10000

        if manual_dir is not None:
            ham10000.prepare(manual_dir, data_dir, config=name, image_size=config.data.build_size)
        return ham10000.open_source(data_dir, config=name, image_size=config.data.build_size), ham10000.TFDS_SPLIT[name]

    return open_set


@register(
    "ham10000",
    "HAM10000 from any official layout (Kaggle, Dataverse, ISIC 2018), or synthetic "
    "HAM10000-like images (data.synthetic_images > 0)",
    images="HAM10000 dermoscopy images",
    class_names=CLASS_NAMES,
    metadata_fields=META_FIELDS,
    subgroups=("acquisition source", "diagnosis confirmation", "age", "sex", "body site"),
    paper_results=paper.RESULTS,
    prebuilt=True,
    external={name: _isic2018(name) for name in ("isic2018_test", "isic2018_validation")},
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


@register(
    "folder",
    "your own images, one sub-folder per class (data.manual_dir)",
    images="the image folders of {manual_dir}",
)
def _open_folder(config: Any, workdir: pathlib.Path) -> dict[str, records.Source]:
    from caco_jax.data import folder, records

    data_dir, manual_dir = data_location(config, workdir)
    if manual_dir is None or config.data.synthetic_images > 0:
        raise ConfigError(
            "data.name=folder reads your own images: set --config.data.manual_dir=/path/to/folder "
            "(one sub-folder per class) and leave data.synthetic_images at 0"
        )
    built = folder.prepare(manual_dir, data_dir, image_size=config.data.build_size, progress=config.progress_bar)
    return records.split_source(records.open_source(built), **split_options(config))
