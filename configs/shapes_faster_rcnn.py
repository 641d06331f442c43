r"""Faster R-CNN, tiny ResNet-FPN, FL-trained RPN, on the synthetic "shapes" data, on a CPU.

What: the second main job (`make train-faster-rcnn`). The data set, optimizer and schedule of
`configs/shapes_retinanet.py` (4 classes of filled shapes, 8-64 px, on 128x128 images; AdamW,
cosine), with the detector of `configs/coco_faster_rcnn_r50.py` scaled down to the data and the
CPU. The RPN is trained with FL-RPN's 2-way softmax focal loss (alpha 0.25, gamma 2, lambda 0.1,
no sampling); `--config.model.rpn.loss=sampled|focal_sigmoid|ce_all` for the others.

What differs from detectron2's recipe, and why:
- backbone `resnet_tiny` with batch norm and 64 FPN channels (the shapes RetinaNet's);
- anchors of 8-128 px (2x the stride of P2-P6, the paper has 8x) and one aspect ratio: the
  objects are 8-64 px and as wide as they are tall;
- proposals: 1000 per level before NMS, TRAIN_POST / TEST_POST after it (detectron2: 2000 / 1000,
  for images 65x larger);
- 64 RoIs per image instead of 512 (4 objects an image, not 7 of 80 classes), pooled with 2x2
  samples per bin, and a box head of 2 FC of 256 instead of 1024.

Command:

  python -m train --config configs/shapes_faster_rcnn.py --workdir runs/shapes_faster_rcnn

  (or `make train-faster-rcnn`).

Hardware, time and result: TO BE MEASURED.
"""

import ml_collections

from configs import coco_faster_rcnn_r50, shapes_retinanet


def get_config() -> ml_collections.ConfigDict:
    config = shapes_retinanet.get_config()
    model = config.model = coco_faster_rcnn_r50.model_config()
    model.backbone = "resnet_tiny"
    model.norm = "bn"
    model.fpn_channels = 64
    model.anchor_sizes = (8.0, 16.0, 32.0, 64.0, 128.0)
    model.aspect_ratios = (1.0,)
    model.rpn.loss = "focal_softmax"
    model.rpn.train_pre_nms_topk = 1000
    model.rpn.train_post_nms_topk = 300
    model.rpn.test_pre_nms_topk = 1000
    model.rpn.test_post_nms_topk = 300
    model.roi.num_samples = 32
    model.roi.sampling_ratio = 1
    model.roi.head_fc_dim = 256
    config.num_train_steps = 1200
    return config
