"""Fine-tuning from a model-zoo file (`configs/coco_folder_zoo.py`): a torchvision-layout RetinaNet
file, converted at the start, trains a few steps on a COCO-format folder with 3 classes of its
own and evaluates; the frozen stem keeps the file's values, the workdir records the file, and the
classes named after COCO categories start from the file's classifier."""

from __future__ import annotations

import json
import os

import numpy as np

from configs import coco_folder_zoo
from focaljax.data.coco_folder import CocoFolder
from tests.data.test_coco_folder import (
    CLASS_NAMES,
    DOWNLOAD_CONFIG,
    make_source,
    make_source_splits,
)
from tests.models import zoo_files
from tests.train.test_pretrained_training import restore
from train import train
from train import workdir as workdir_lib


def test_a_zoo_file_fine_tunes_on_a_coco_folder_with_three_classes(tmp_path, capsys):
    source = tmp_path / "my_data"
    make_source(source)
    data_dir = tmp_path / "tfds"
    CocoFolder(config="my_data", splits=make_source_splits(source),
               data_dir=str(data_dir)).download_and_prepare(download_config=DOWNLOAD_CONFIG)
    state = zoo_files.tiny_retinanet_state()
    weights = zoo_files.write_pth(tmp_path / "retinanet_tiny_coco.pth", state)

    # The README's command, shrunk: resnet_tiny, 64x64 images, 3 steps.
    config = coco_folder_zoo.get_config(f"torchvision_retinanet:{weights}")
    config.dataset.data_dir = str(data_dir)
    config.dataset.builder_kwargs = {"name": "my_data"}
    config.dataset.image_size = (64, 64)
    config.dataset.max_boxes = 4
    config.dataset.eval_split = "train"
    model = config.model
    model.backbone = "resnet_tiny"
    model.fpn_channels = model.head_channels = 32
    model.head_convs = 2
    model.postprocess.max_detections = 20
    model.zoo_classes = ",".join(CLASS_NAMES)  # apple, zebra, kite: COCO categories
    config.batch_size = config.eval_batch_size = 4
    config.num_epochs = 0.0
    config.num_train_steps = 3
    config.schedule.warmup_steps = 1
    config.schedule.decay_epochs = ()
    config.checkpoint_every_steps = 3
    config.log_every_steps = 1
    config.num_grid_images = 0
    config.anchor_coverage_images = 0
    workdir = str(tmp_path / "run")

    metrics = train.train_and_evaluate(config, workdir)

    assert {"AP", "AP50"} <= set(metrics) and np.isfinite(metrics["AP"])
    assert f"{weights} (pth): a torchvision retinanet" in capsys.readouterr().out
    with open(os.path.join(workdir, workdir_lib.PRETRAINED_FILE)) as f:
        record = json.load(f)
    assert (record["family"], record["architecture"]) == ("torchvision", "retinanet")
    assert "classes: 3 of the file's COCO classes, 0 new" in record["notes"]
    params = restore(workdir, 3)["params"]
    # freeze_at 2: the stem is the file's to the bit; the heads trained.
    np.testing.assert_array_equal(params["backbone"]["resnet"]["stem_conv"]["kernel"],
                                  state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))
    trained = np.asarray(params["box_subnet"]["conv0"]["kernel"])
    file = state["head.regression_head.conv.0.0.weight"].transpose(2, 3, 1, 0)
    assert trained.shape == file.shape and not np.array_equal(trained, file)
