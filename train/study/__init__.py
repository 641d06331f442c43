r"""The paper's study with one command: RetinaNet's Table 1, Figure 4 and the FL-RPN comparison,
as a resumable grid of training runs with seeds and verdicts that respect the noise.

  python -m train.study --study table1,figure4 --workdir runs/study            # full preset
  python -m train.study --study table1,figure4 --workdir runs/quick --preset quick
  python -m train.study --study rpn --workdir runs/study_rpn
  python -m train.study --study table1 --workdir runs/mine \
      --base_config configs/coco_folder_retinanet.py --setting base          # your data

The modules, in the order the work flows:
- `studies`: the papers' numbers and the studies as data (variants, tables, the claim each
  table tests);
- `grid`: settings (data and anchors), presets (schedules), the expansion into runs;
- `data_report`: what a setting trains under, measured (anchors, positives, anchor coverage,
  single-pixel hardness);
- `runner`: training the runs (resuming, skipping finished ones) and writing the outputs;
- `runs`: reading a run's own files; `verdicts`: the rule that decides each claim;
- `figure4`: Figure 4 from a finished run (numerics in `focaljax.evaluation.loss_curves`);
- `report`: study.md and the plots; `__main__`: the command line.

Every run is one `train.train.train_and_evaluate` of the base config with a few fields
overridden, in its own sub-workdir `DIR/runs/SETTING/RUN`. Running the command again skips the
finished runs (`study_result.json`, written atomically once a run has ended) and resumes an
interrupted one from its latest checkpoint. SIGTERM or Ctrl-C saves the running run's step, writes
the outputs and exits with 128 + the signal. A run whose loss becomes NaN is recorded as
diverged (AP 0 in the verdicts), and the study goes on.
"""
