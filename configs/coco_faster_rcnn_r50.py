r"""Faster R-CNN R50-FPN on COCO 2017 with detectron2's 1x recipe, the RPN trained by focal loss.

What: the 80 COCO categories, trained on train2017 (118k images), evaluated on val2017 (5k
images) with pycocotools, box AP and the RPN's proposal recall (AR@100, AR@300, AR@1000,
class-agnostic, as mmdetection's "proposal" metric). detectron2's `faster_rcnn_R_50_FPN_1x`:
P2-P6 with 256 channels (P6 subsampled from P5), one anchor size per level (32 to 512) at ratios
1:2, 1:1, 2:1; RPN matching IoU >= 0.7 object, < 0.3 background, low-quality matches; proposals
per level top 2000 (train) / 1000 (test) before NMS 0.7, then 1000 per image; RoIs pooled 7x7
(aligned RoIAlign, adaptive sampling) from P2-P5, 2 FC of 1024; 512 RoIs per image at 0.25
foreground (IoU >= 0.5), box coding weights (10, 10, 5, 5), L1 box losses. SGD momentum 0.9 at
0.02 per 16 images, weight decay 1e-4, warm-up over 1000 steps, 90k steps of 16 images, x0.1 at
60k and 80k.

The RPN loss is `model.rpn.loss`: "focal_softmax" here (FL-RPN, Chen et al. 2018: no sampling,
(0.1 / N) sum FL + (1 / 2N) sum L_reg over all non-ignored anchors, alpha 0.25, gamma 2, the 2-way
softmax form that the paper found best), or "sampled" for detectron2's standard RPN (256 anchors
per image at 1:1), "focal_sigmoid" or "ce_all" (see `focaljax/detectors/faster_rcnn.py`).

The backbone is `configs/coco_retinanet_r50.py`'s, by the config argument: a weight file
(`--config configs/coco_faster_rcnn_r50.py:/data/R-50.pkl`) gives detectron2's recipe, ImageNet
weights with frozen batch norm, the stem and C2 frozen (`freeze_at=2`), the MSRA stride layout
(add `--config.model.stride_in_1x1=False` for torchvision or timm weights; the trainer checks it
against the file); none trains from scratch with GroupNorm in the backbone (He et al.,
"Rethinking ImageNet Pre-training", 2019). Images are resized to fit 800x1344 and padded to it,
as in `configs/coco_retinanet_r50.py`.

Command. Prepare once from the official files (nothing is downloaded):

  python -m train.prepare_data --dataset coco --source_dir /data/coco

then, from detectron2's ImageNet R-50.pkl, or from scratch:

  python -m train --config configs/coco_faster_rcnn_r50.py:/data/R-50.pkl \
      --workdir runs/coco_faster_rcnn_r50
  python -m train --config configs/coco_faster_rcnn_r50.py --workdir runs/coco_faster_rcnn_scratch

  (`--config.model.rpn.loss=sampled` for the standard RPN.)

Hardware, time and result: NOT MEASURED here (no COCO and no accelerator on the project's
machine). Reference for the weight-file recipe: detectron2's `faster_rcnn_R_50_FPN_1x`
(ImageNet-pretrained, sampled RPN) 37.9 box AP on val2017, its RPN alone 58.0 AR@1000;
mmdetection's 37.4 (the two projects' model zoos). Expect less from scratch on a 1x
schedule.
"""

import ml_collections

from configs import coco_retinanet_r50, default


def get_config(weights: str = "") -> ml_collections.ConfigDict:
    """From the ImageNet `weights` file (`--config configs/coco_faster_rcnn_r50.py:PATH`) or,
    when it is "", from scratch."""
    # The data, schedule and evaluation of the COCO RetinaNet recipe; the detector and its rate.
    config = coco_retinanet_r50.get_config(weights)
    config.model = default.faster_rcnn_model(weights)
    config.optimizer.learning_rate = 0.02  # detectron2's Faster R-CNN: 0.02 per 16 images.
    return config
