r"""Fine-tuning a COCO-trained detector of torchvision's or detectron2's model zoo on your own data:
a folder of images and a COCO-format JSON per split, any classes.

What: the data set, augmentation and schedule of `configs/coco_folder_retinanet.py` (640x640,
scale jitter 0.8-1.2, flips, 12 epochs with x0.1 at epochs 8 and 11), the detector of the zoo
file named by the config argument `PRESET:PATH`, with PRESET one of
`focaljax.detectors.zoo.ZOO_PRESETS`:

* `torchvision_retinanet`: `retinanet_resnet50_fpn_coco-eeacb38b.pth` (COCO box AP 36.4; the
  command below names it /data/retinanet_coco.pth);
* `torchvision_retinanet_v2`: `retinanet_resnet50_fpn_v2_coco-5905b1c5.pth` (41.5; GroupNorm
  heads, P6 from C5, trained with the GIoU box loss, which the preset keeps);
* `detectron2_retinanet`: `retinanet_R_50_FPN_{1x,3x}` `model_final_*.pkl` (37.4 / 38.7);
* `torchvision_faster_rcnn`: `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth` (37.0);
* `torchvision_faster_rcnn_v2`: `fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth` (46.7; batch norm
  in the FPN and the 4-conv, 1-fc box head, frozen here as in the ResNet; a 2-conv RPN head);
* `detectron2_faster_rcnn`: `faster_rcnn_R_50_FPN_{1x,3x}` `model_final_*.pkl` (37.9 / 40.2).

(`.safetensors` copies of torchvision's state dicts work too; nothing is downloaded.) The ResNet,
the FPN, the RPN and the box regression come from the file; the class outputs start anew, from
the prior probability 0.01 (RetinaNet's classifier; Faster R-CNN's classifier and class-specific
box deltas from their initialization), unless `--config.model.zoo_classes` names each of your
classes by its COCO category name, comma-separated in your classes' order (e.g.
"person,car,dog"): a named class then starts from the file's classifier for that category, an
unnamed one anew. The recipe: frozen batch norm (the v2 models' FPN and box head too), the stem
and C2 frozen (detectron2's FREEZE_AT 2, torchvision's 3 trainable layers), SGD with momentum 0.9
at half the COCO recipe's learning rate (0.005 per 16 images for RetinaNet, 0.01 for Faster
R-CNN; the model already detects, and a small data set is easy to overfit) after 100 warm-up
steps, weight decay 1e-4. Without an argument the
same architecture (torchvision's RetinaNet) trains from scratch, which is rarely what you want.

Command. Prepare the folder once (see `configs/coco_folder_retinanet.py`), then:

  python -m train \
      --config configs/coco_folder_zoo.py:torchvision_retinanet:/data/retinanet_coco.pth \
      --workdir runs/my_data_zoo --config.dataset.builder_kwargs.name=my_data
  python -m train \
      --config configs/coco_folder_zoo.py:detectron2_faster_rcnn:/data/model_final_280758.pkl \
      --workdir runs/my_data_frcnn --config.dataset.builder_kwargs.name=my_data \
      --config.model.zoo_classes="person,bicycle,car"
  python -m train --config configs/coco_folder_zoo.py --workdir runs/my_data_zoo_scratch \
      --config.dataset.builder_kwargs.name=my_data

The file is read at the first start only (the workdir's `pretrained_weights.json` records it);
a file of another architecture than PRESET's is refused in one line naming what differs.

Hardware, time and result: depend on the data; no reference applies. tests/train/
test_zoo_finetuning.py runs this config shrunk (a resnet_tiny zoo file, 64x64 images, 3 classes)
for 3 steps and evaluates it.
"""

import ml_collections

from configs import coco_folder_retinanet, default
from focaljax.detectors import zoo

# Half the learning rate of each detector's COCO recipe, per 16 images.
LEARNING_RATES = {"retinanet": 0.005, "faster_rcnn": 0.01}


def get_config(preset_and_file: str = "") -> ml_collections.ConfigDict:
    """`PRESET:PATH` (a zoo preset and its file), or "" for torchvision's RetinaNet from scratch."""
    preset, _, path = preset_and_file.partition(":")
    preset = preset or "torchvision_retinanet"
    if preset not in zoo.ZOO_PRESETS or (preset_and_file and not path):
        raise ValueError(
            f"the config argument is {preset_and_file!r}, expected PRESET:PATH with PRESET one "
            f"of {sorted(zoo.ZOO_PRESETS)}"
        )
    config = coco_folder_retinanet.get_config()
    name = zoo.ZOO_PRESETS[preset][0]
    model = default.retinanet_model() if name == "retinanet" else default.faster_rcnn_model()
    zoo.apply_preset(model, preset)
    model.zoo_weights = path
    model.zoo_classes = "new"
    model.freeze_at = 2
    config.model = model

    config.optimizer.learning_rate = LEARNING_RATES[name]
    config.schedule.warmup_steps = 100
    return config
