"""The dataset registry (caco_jax.data.registry): every entry's declared facts hold together with what
every build stores, the report's subgroup definitions and the other registries; lookups fail with
one error naming the key and the choices."""

from __future__ import annotations

import pathlib
import sys

import pytest

from caco_jax.data import ham10000, registry
from caco_jax.errors import ConfigError
from caco_jax.evaluation import subgroups
from caco_jax.models.attention import ATTENTION_BLOCKS
from caco_jax.training.losses import LOSSES

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import default

BUILD_OWN = {"image", "label", "image_id", "lesion_id"}  # every build's fields that are not metadata


@pytest.mark.parametrize("name", tuple(registry.DATASETS))
def test_entry_facts_fit_the_builds_the_reports_and_the_other_registries(name):
    entry = registry.DATASETS[name]
    assert entry.name == name and entry.description and entry.images
    stored = set(ham10000.features(("a", "b")).keys())  # what every build of this project stores
    assert set(entry.metadata_fields) <= stored - BUILD_OWN
    for dimension in entry.subgroups:  # each a definition of the reports, over a field the builds carry
        assert subgroups.DIMENSIONS[dimension][0] in entry.metadata_fields, dimension
    for (attention, loss, pretrained), row in entry.paper_results.items():
        assert attention in ATTENTION_BLOCKS and loss in LOSSES and isinstance(pretrained, bool)
        assert entry.paper_row(attention, loss, pretrained) is row
    if entry.class_names is not None:
        assert len(entry.class_names) >= 2
    config = default.get_config()
    config.data.name, config.data.manual_dir = name, "/somewhere/my_images"
    text = entry.images_of(config)
    assert "{" not in text and (text == entry.images or "/somewhere/my_images" in text)


def test_the_ham10000_entry_carries_its_facts():
    entry = registry.DATASETS["ham10000"]
    assert entry.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert {"dx_type", "age", "sex", "localization", "source"} <= set(entry.metadata_fields)
    row = entry.paper_row("caco", "joint", True)
    assert (row.accuracy, row.bacc, row.table) == (93.39, 86.35, "Tables 4 and 5")  # the paper's Table 4
    assert entry.prebuilt and not registry.DATASETS["folder"].prebuilt
    assert not registry.DATASETS["folder"].paper_results and registry.DATASETS["folder"].class_names is None
    assert tuple(entry.external) == ("isic2018_test", "isic2018_validation") == registry.external_names()[:2]


def test_an_external_set_is_opened_through_the_run_datasets_entry(tmp_path):
    """caco-jax evaluate --dataset NAME asks the run's dataset for the set: one it lacks is a ConfigError."""
    config = default.get_config()
    config.data.name = "folder"
    with pytest.raises(ConfigError, match=r"--dataset isic2018_test: the run's dataset 'folder' has no such"):
        registry.open_external(config, "isic2018_test", tmp_path)
    config.data.name = "ham10000"
    with pytest.raises(ConfigError, match=r"no such external set \(its sets: isic2018_test, isic2018_validation\)"):
        registry.open_external(config, "isic2019", tmp_path)


def test_unknown_names_fail_with_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"^unknown data.name 'nope'; choices: ham10000, folder"):
        registry.DATASETS["nope"]
    assert registry.known("nope") is None and registry.known("folder") is registry.DATASETS["folder"]
