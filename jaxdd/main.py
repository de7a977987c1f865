"""Command-line launcher: `python -m jaxdd.main --config=configs/digits.py [--config.x=y]`.

The logic lives in `jaxdd.run` so that it can be imported from notebooks and tests; config
files load through `jaxdd.config` (no `sys.path` edits, from any working directory).
"""

import pathlib
import sys

from absl import app, flags

from jaxdd import config as config_lib
from jaxdd import run

_CONFIG = config_lib.config_flag()
flags.DEFINE_string(
    "workdir", "", "Output directory; default runs/<dataset>-ipc<ipc>-<family>-<risk>."
)


def default_workdir(config) -> pathlib.Path:
    name = config.data.name.replace(":", "_").replace("/", "_")
    return (
        pathlib.Path("runs") / f"{name}-ipc{config.ipc}-{config.match.family}-{config.robust.risk}"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("pass --config=path/to/configs/<name>.py (e.g. configs/digits.py).")
    workdir = flags.FLAGS.workdir or default_workdir(config)
    try:
        result = run.distill(config, workdir)
    except run.Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    report = result.report
    print(
        f"test accuracy {report['accuracy_mean']:.2f} +- {report['accuracy_std']:.2f} % "
        f"({report['num_models']} networks), worst group "
        f"{report.get('worst_group_accuracy', float('nan')):.2f} %, worst class "
        f"{report['worst_class_accuracy']:.2f} %; selected step {report['selected_step']}\n"
        f"wrote {result.workdir}: synthetic.npz, synthetic.png, eval.json, metrics.jsonl"
    )


if __name__ == "__main__":
    app.run(main)
