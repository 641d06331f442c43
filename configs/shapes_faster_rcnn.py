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
- proposals: 1000 per level before NMS, 300 per image after it, in training and test (detectron2:
  2000 or 1000, then 1000, for images 65x larger), so AR@1000 equals AR@300;
- 32 RoIs per image instead of 512 (a few objects an image), pooled with one sample per bin
  instead of the adaptive grid, and a box head of 2 FC of 256 instead of 1024: RoIAlign's
  gradient is a scatter that XLA:CPU runs slowly, and its cost grows with RoIs x samples;
- AdamW 0.004 with a cosine schedule (the shapes RetinaNet's), 1500 steps of 16 images.

Command:

  python -m train --config configs/shapes_faster_rcnn.py --workdir runs/shapes_faster_rcnn

  (or `make train-faster-rcnn`).

Hardware, time and result: 2-core AMD EPYC VM, no accelerator, jax 0.10.2, set-up done.
`make train MODEL=faster_rcnn` took 595 s wall-clock (1500 steps at a median of 46.5 images/s,
then the evaluation), and gave on the 200 validation images (pycocotools; AR: class-agnostic
proposal recall at 100 proposals):

    AP 0.763 | AP50 0.951 | AP75 0.856 | APs 0.755 | APm 0.767 | AR@100 0.727

The target (AP >= 0.6 and AP50 >= 0.85 within 10 minutes) is met, with little time to spare.
Same config, other RPN losses (AP / AP50 / AR@100): sampled 0.763 / 0.948 / 0.681,
focal_sigmoid 0.763 / 0.945 / 0.720, ce_all
0.735 / 0.922 / 0.714 (BENCHMARKS.md).
"""

import ml_collections

from configs import default, shapes_retinanet


def get_config() -> ml_collections.ConfigDict:
    # The data, optimizer and schedule of the shapes RetinaNet; the detector scaled down from
    # detectron2's (the module docstring says what differs and why).
    config = shapes_retinanet.get_config()
    model = config.model = default.faster_rcnn_model()
    model.backbone = "resnet_tiny"
    model.norm = "bn"
    model.fpn_channels = 64
    model.anchor_sizes = (8.0, 16.0, 32.0, 64.0, 128.0)
    model.aspect_ratios = (1.0,)
    model.rpn.train_pre_nms_topk = 1000
    model.rpn.train_post_nms_topk = 300
    model.rpn.test_post_nms_topk = 300
    model.roi.num_samples = 32
    model.roi.sampling_ratio = 1
    model.roi.head_fc_dim = 256
    config.num_train_steps = 1500
    return config
