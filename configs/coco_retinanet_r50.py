r"""RetinaNet ResNet-50-FPN on COCO 2017 with the paper's 1x recipe, for one GPU or TPU host.

What: the 80 COCO categories, trained on train2017 (118k images), evaluated on val2017 (5k
images) with pycocotools. The recipe of Lin et al. 2017 (section 4.1) and detectron2's
`retinanet_R_50_FPN_1x`: P3-P7 with 256 channels, 9 anchors per location (sizes 32-512, scales
2^0, 2^(1/3), 2^(2/3), ratios 1:2, 1:1, 2:1), IoU >= 0.5 foreground, < 0.4 background, focal loss
alpha 0.25, gamma 2, L1 box loss, normalized by the foreground anchors of the global batch. SGD
with momentum 0.9 at 0.01 per 16 images, weight decay 1e-4 (not on biases and norms), linear
warm-up from 0.001x over 1000 steps, 90k steps at 16 images per step, x0.1 at 60k and 80k.
Inference: score > 0.05, top 1000 per level, per-class NMS 0.5, 100 detections.

Images are resized to fit 800x1344, keeping their aspect ratio, and padded to it: landscape
images get detectron2's short side of 800 (long side at most 1344), portrait ones a long side of
800. Horizontal flips, no scale jitter (the paper's 1x models).

The backbone, by the config argument (the text after ":" in `--config`, `get_config(weights)`):

* A weight file, the paper's recipe: the ResNet-50 starts from ImageNet weights with every batch
  norm frozen to the file's statistics (`model.norm="frozen_bn"`), the stem and C2 frozen
  (`model.freeze_at=2`: no update, no weight decay) and no norm in the heads. The stride sits in
  the 1x1 convolutions (`model.stride_in_1x1=True`), as in the MSRA weights the paper and
  detectron2 start from (detectron2's `R-50.pkl`). torchvision and timm weights (`.pth`,
  `.safetensors`) have it in the 3x3 convolution: add `--config.model.stride_in_1x1=False` (the
  trainer checks the flag against the file and says which value it needs). A Keras `.h5` is
  MSRA's layout. The file is read at the first start only: its converted weights are in the
  checkpoints, so resuming and `python -m train.predict` do not need it; the workdir's
  `pretrained_weights.json` records its path, format, size and sha256.
  Reference: 36.5 (mmdetection) and 37.4 (detectron2) AP on val2017 for RetinaNet R50-FPN 1x,
  35.7 on test-dev in the paper (R50-800, Table 1e).
* None (the default): from scratch, GroupNorm in the backbone and the heads (He et al.,
  "Rethinking ImageNet Pre-training", 2019), nothing frozen. Expect less than the reference
  above from a 1x schedule; longer schedules (`--config.num_train_steps=270000
  --config.schedule.decay_steps="(210000,250000)"`) close most of the gap in that paper.

Command. Prepare once from the official files (nothing is downloaded; about 25 GB written):

  python -m train.prepare_data --dataset coco --source_dir /data/coco

then, from detectron2's ImageNet R-50.pkl (or `:/data/resnet50.pth
--config.model.stride_in_1x1=False` for torchvision's), or from scratch:

  python -m train --config configs/coco_retinanet_r50.py:/data/R-50.pkl \
      --workdir runs/coco_retinanet_r50
  python -m train --config configs/coco_retinanet_r50.py --workdir runs/coco_retinanet_r50_scratch

  (`--config.dataset.data_dir=DIR` if it was prepared outside ~/tensorflow_datasets;
  `--config.model.dtype=bfloat16` for mixed precision on TPU or recent GPUs.)

Hardware, time and result: TO BE MEASURED on COCO. The batch of 16 images of 800x1344 needs a
single accelerator with about 40 GB or several devices (batch_size must be a multiple of the
device count of all hosts; the learning rate scales with it).
"""

import ml_collections

from configs import default


def get_config(weights: str = "") -> ml_collections.ConfigDict:
    """The recipe from the ImageNet `weights` file (`--config configs/coco_retinanet_r50.py:PATH`)
    or, when `weights` is "", from scratch; see the module docstring."""
    # configs/default.py is this recipe from scratch; a weight file changes only the model.
    config = default.get_config()
    config.model = default.retinanet_model(weights)
    return config
