r"""Faster R-CNN R50-FPN on PASCAL VOC 2007 with an FL-trained RPN: the FL-RPN paper's setting.

What: the 20 VOC classes, trained on VOC2007 trainval (5011 images), evaluated on test (4952
images) with VOC2007's 11-point mAP@0.5 (`VOC07_mAP50`), the COCO metrics and the RPN's proposal
recall (AR@100, AR@300, AR@1000). This is the setting of Chen, Song, Jiang, "Focal Loss for Region
Proposal Network" (PRCV 2018), which compares the standard sampled RPN with FL-RPN on VOC2007.
The detector is `configs/coco_faster_rcnn_r50.py`'s (detectron2's R50-FPN layout, FL-RPN softmax
form by default, `--config.model.rpn.loss=sampled` for the standard RPN); the data set, schedule
and evaluation are `configs/voc_retinanet_r50.py`'s: images fit into 512x512 with scale jitter
0.8-1.2, SGD, 24 epochs, x0.1 at epochs 16 and 22; "difficult" objects are ignore regions.
The learning rate is detectron2's Faster R-CNN rate, 0.02 per 16 images.

The ResNet-50 is `configs/coco_retinanet_r50.py`'s, by the config argument: from an ImageNet
weight file with frozen batch norm and the stem and C2 frozen, as the paper fine-tunes it
(`--config.model.stride_in_1x1=False` for torchvision or timm weights), or without one from
scratch with GroupNorm.

Command. Prepare once from the official files (nothing is downloaded):

  python -m train.prepare_data --dataset voc --source_dir /data/voc

then:

  python -m train --config configs/voc_faster_rcnn_r50.py:/data/R-50.pkl \
      --workdir runs/voc_faster_rcnn_r50
  python -m train --config configs/voc_faster_rcnn_r50.py --workdir runs/voc_faster_rcnn_scratch

Hardware, time and result: NOT MEASURED here (no VOC and no accelerator on the project's
machine). Reference: the FL-RPN paper reports that focal loss slightly improves on the sampled
RPN on VOC2007 and that the softmax form beats the sigmoid one; its exact table values are not
available to this project (Chen, Song, Jiang, PRCV 2018), so there is no number to
compare with.
"""

import ml_collections

from configs import default, voc_retinanet_r50


def get_config(weights: str = "") -> ml_collections.ConfigDict:
    """From the ImageNet `weights` file or, when it is "", from scratch."""
    config = voc_retinanet_r50.get_config(weights)
    config.model = default.faster_rcnn_model(weights)
    config.optimizer.learning_rate = 0.02  # detectron2's Faster R-CNN: 0.02 per 16 images.
    return config
