r"""RetinaNet ResNet-50-FPN on PASCAL VOC 2007: trained on trainval, evaluated on test.

What: the 20 VOC classes, 5011 trainval images (VOC2007 "train+validation"), evaluated on the
4952 test images. Images are resized to fit 512x512 (VOC images are at most 500 px) with scale
jitter 0.8-1.2, padded square. RetinaNet as in the paper (P3-P7, 9 anchors, focal loss alpha 0.25,
gamma 2, L1 box loss), SGD at 0.01 per 16 images, 24 epochs, x0.1 at epochs 16 and 22. The
ResNet-50 is `configs/coco_retinanet_r50.py`'s, by the config argument: from an ImageNet weight
file (`--config configs/voc_retinanet_r50.py:/data/R-50.pkl`) with frozen batch norm and the stem
and C2 frozen, as the paper fine-tunes it (`--config.model.stride_in_1x1=False` for torchvision or
timm weights), or without one from scratch with GroupNorm.

"Difficult" objects are ignore regions in training and left out of evaluation, as VOC does (see
`focaljax.data.voc`). The trainer reports COCO-style metrics (AP, AP50, ...; with difficult
objects as crowd regions, AP50 is close to VOC's all-point mAP at IoU 0.5) and, as
`config.evaluators = ("coco", "voc07")` asks, VOC2007's own metric: the 11-point mAP at IoU 0.5 of
the VOC devkit (`focaljax.evaluation.voc.voc_map`), logged as `VOC07_mAP50` (`eval/VOC07_mAP50` in
metrics.jsonl and TensorBoard). `--config.evaluators='("coco","voc")'` reports the all-point
(VOC2010+) mAP as `VOC_mAP50` instead, `--config.evaluators='("coco",)'` neither.

Command. Prepare once from the official files (nothing is downloaded; about a minute):

  python -m train.prepare_data --dataset voc --source_dir /data/voc

  where /data/voc holds VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar, or what they
  extract to, VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main}. Then:

  python -m train --config configs/voc_retinanet_r50.py:/data/R-50.pkl \
      --workdir runs/voc_retinanet_r50
  python -m train --config configs/voc_retinanet_r50.py --workdir runs/voc_retinanet_r50_scratch

  (`--config.dataset.builder_kwargs.source_dir=/data/voc` lets the trainer prepare it instead;
  `--config.dataset.data_dir=DIR` if it was prepared outside ~/tensorflow_datasets.)

Hardware, time and result: TO BE MEASURED. No reference result for RetinaNet on VOC is known
to this project; the only VOC2007 figures at hand are Fast R-CNN VGG16 (67.2 -> 69.9 mAP with OHEM,
OHEM paper), a different detector, so not a target for this config.
"""

import ml_collections

from configs import coco_retinanet_r50


def get_config(weights: str = "") -> ml_collections.ConfigDict:
    """From the ImageNet `weights` file or, when it is "", from scratch."""
    # The model, optimizer and inference settings of the COCO recipe; data and schedule below.
    config = coco_retinanet_r50.get_config(weights)

    dataset = config.dataset
    dataset.name = "voc"
    # source_dir is read only when the data set is not prepared in data_dir yet.
    dataset.builder_kwargs = ml_collections.ConfigDict({"source_dir": "", "config": "2007"})
    dataset.image_size = (512, 512)
    dataset.max_boxes = 64  # VOC2007 has at most 42 objects per image.
    dataset.train_split = "train+validation"
    dataset.eval_split = "test"
    dataset.scale_jitter = (0.8, 1.2)

    config.schedule.warmup_steps = 500
    config.schedule.decay_steps = ()  # The decay points in epochs instead.
    config.schedule.decay_epochs = (16, 22)
    config.num_train_steps = 0  # The length in epochs instead.
    config.num_epochs = 24.0
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 1000
    config.evaluators = ("coco", "voc07")  # Also VOC2007's 11-point mAP@0.5, as VOC07_mAP50.
    return config
