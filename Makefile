# `make test` and `make train` do all set-up on a fresh machine: they create .venv, install focaljax
# editable with its test extras, then run. Both are idempotent: the install step reruns only when
# pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make train MODEL=faster_rcnn` trains configs/shapes_faster_rcnn.py instead of the RetinaNet.
MODEL ?= retinanet
WORKDIR ?= runs/shapes_$(MODEL)
PYTEST_ARGS ?=

.PHONY: setup test train study lint bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# --durations: the slowest tests end the log, to watch the suite's 15-minute budget.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q --durations=20 $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) -m train --config configs/shapes_$(MODEL).py --workdir $(WORKDIR)

# `make study` runs the paper's study (Table 1 and Figure 4 on data built for the paper's regime,
# the "full" preset, 4,800 steps a run, 3 seeds a row, 52 runs: about 12 hours on 2 CPU cores
# (estimated from its runs), see README "Reproducing the paper"); PRESET=long for 9,600 steps a run
# (about 19 hours: 21-22 minutes a run alone, measured 2026-12-05); PRESET=xlong for 19,200
# (45 minutes a run alone, measured 2026-12-05: the headline rows' 15 runs take about 11 hours);
# PRESET=quick for a one-seed look, labelled not shown converged (18 runs, 33 minutes alone on
# 2 CPU cores, measured 2026-12-04);
# STUDY=rpn for the FL-RPN comparison (give it a STUDY_DIR of its own, e.g.
# docs/study_results/rpn); RUNS=pattern,... trains only the matching runs (e.g. the headline
# rows: RUNS='focal_g2_a0.25_s*,alpha_ce_a0.75_s*'); the report covers every run finished in
# STUDY_DIR. Rerunning resumes; results in $(STUDY_DIR)/study.md.
STUDY ?= table1,figure4
PRESET ?= full
STUDY_DIR ?= runs/study
RUNS ?=
study: $(STAMP)
	$(PY) -m train.study --study $(STUDY) --preset $(PRESET) --workdir $(STUDY_DIR) --runs "$(RUNS)"

bench: $(STAMP)
	$(PY) benchmarks/loss_bench.py
	$(PY) benchmarks/nms_bench.py
	$(PY) benchmarks/train_step_bench.py
	$(PY) benchmarks/train_step_bench.py --compare detectors
	$(PY) benchmarks/pretrained_bench.py

# `make docs` builds the documentation site (API pages from the docstrings) into docs/_build/html,
# offline, with warnings as errors, as tests/test_docs.py does.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check focaljax train configs tests benchmarks

clean:
	rm -rf $(VENV) runs
