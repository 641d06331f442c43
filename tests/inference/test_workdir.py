"""Reading a run's workdir made before the library gained config fields: each missing field takes
its default, the behaviour the run had, and the run's own values stay."""

from __future__ import annotations

import json

import ml_collections
import pytest

from focaljax import detectors
from focaljax.data import defaults as data_defaults
from focaljax.data.dataset import DatasetInfo
from focaljax.inference import workdir as workdir_lib

# Fields added after runs had been made: (section, dotted field).
LATER_FIELDS = [
    ("model", "head_conv_bias"), ("model", "p6_input"), ("model", "zoo_weights"),
    ("dataset", "mosaic"), ("dataset", "repeat_factor_threshold"),
]


def old_run(tmp_path, model: str) -> str:
    """A workdir whose config lacks the fields of `LATER_FIELDS` that `model`'s config has."""
    config = ml_collections.ConfigDict({
        "model": detectors.default_config(model), "dataset": data_defaults.default_config(),
    })
    config.model.min_level = 4  # a value of the run's own, not a default
    config.dataset.image_size = (256, 320)
    # A builder's own arguments: the defaults' (COCO's) must not be mixed in.
    config.dataset.builder_kwargs = {"config": "tiny"}
    info = DatasetInfo(name="shapes/default/1.0.0", num_classes=3, class_names=("a", "b", "c"),
                       category_ids=(1, 2, 3), num_examples={"train": 8})
    workdir_lib.write_run_info(str(tmp_path), config, info)
    path = tmp_path / workdir_lib.CONFIG_FILE
    stored = json.loads(path.read_text())
    for section, field in LATER_FIELDS:
        stored[section].pop(field, None)
    path.write_text(json.dumps(stored))
    return str(tmp_path)


@pytest.mark.parametrize("model", ["retinanet", "faster_rcnn"])
def test_a_run_from_before_a_field_reads_with_the_field_at_its_default(tmp_path, model):
    config, info = workdir_lib.read_run_info(old_run(tmp_path, model))
    model_defaults = detectors.default_config(model)
    data = data_defaults.default_config()
    for section, field in LATER_FIELDS:
        defaults = model_defaults if section == "model" else data
        if field in defaults:
            assert config[section][field] == defaults[field], (section, field)
    assert config.model.min_level == 4
    assert tuple(config.dataset.image_size) == (256, 320)
    assert config.dataset.builder_kwargs.to_dict() == {"config": "tiny"}
    assert info.class_names == ("a", "b", "c")
    # The config builds the detector as a current run's would.
    workdir_lib.build_detector(config, info.num_classes)


def test_an_unknown_model_name_is_refused_in_one_line(tmp_path):
    workdir = old_run(tmp_path, "retinanet")
    path = tmp_path / workdir_lib.CONFIG_FILE
    stored = json.loads(path.read_text())
    stored["model"]["name"] = "yolo"
    path.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"unknown model 'yolo', expected one of"):
        workdir_lib.read_run_info(workdir)
