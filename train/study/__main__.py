"""The command line of the study: `python -m train.study --study table1,figure4 --workdir DIR`
(see `train/study/__init__.py`)."""

from __future__ import annotations

import json
import sys

from absl import app, flags

from train import cli
from train import train as trainer
from train.study import grid as grid_lib
from train.study import runner, runs
from train.study import studies as studies_lib
from train.study.grid import StudyError

FLAGS = flags.FLAGS
flags.DEFINE_string("study", None,
                    f"Comma-separated studies: {', '.join(studies_lib.STUDIES)}.")
flags.DEFINE_string("workdir", None, "Directory of the study: runs/, study.md, study.json.")
flags.DEFINE_string("base_config", None, "A configs/*.py file; default: the study's own.")
flags.DEFINE_string("preset", "full", f"Schedule: {', '.join(grid_lib.PRESETS)}.")
flags.DEFINE_string("setting", "", f"One of {', '.join(grid_lib.SETTINGS)}; default: the "
                    "study's (paper_regime on the shapes data, base on any other data set).")
flags.DEFINE_bool("full_grid", False, "Table 1b: every alpha at every gamma (one seed each).")
flags.DEFINE_integer("seeds", None, "Seeds of each row that enters a verdict (>= 1); default: "
                     "the preset's (xlong, long, full and short 3, quick 1).")
flags.DEFINE_list("runs", [], "Train only the runs matching these names or shell patterns "
                  "(the report covers every run finished in --workdir).")
flags.DEFINE_bool("list_runs", False, "Print the runs of the grid and their overrides; exit.")
flags.DEFINE_bool("report_only", False, "Train nothing: rewrite study.md, study.json and the plots "
                  "from the runs in --workdir as they are.")
flags.mark_flags_as_required(["study", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    cli.quiet_libraries()
    try:
        request = runner.resolve_request(
            FLAGS.study, FLAGS.preset, FLAGS.base_config, setting=FLAGS.setting,
            full_grid=FLAGS.full_grid, seeds=FLAGS.seeds, runs=FLAGS.runs)
        if FLAGS.list_runs:
            grid, _ = runner.plan(request, FLAGS.workdir)
            for run in grid_lib.select_runs(grid, request.runs):
                print(f"{run.key}: {json.dumps(runs.jsonable(run.overrides))}")
            return
        runner.run_study(request, FLAGS.workdir, echo=lambda line: print(line, flush=True),
                         report_only=FLAGS.report_only)
    except StudyError as error:
        cli.fail(str(error))
    except trainer.TrainingInterruptedError as stop:
        print(f"{stop} (the study's outputs are written)",
              file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
