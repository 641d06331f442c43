"""Training, evaluation and study entry points (`python -m train`, `train.predict`,
`train.prepare_data`, `train.study`), run from a checkout; not part of the installed package."""
