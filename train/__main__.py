"""`python -m train --config configs/shapes_retinanet.py --workdir DIR`; see `train/main.py`."""

from train.main import run

run()
