"""Command-line launcher: `python -m jaxdd.main --config=configs/digits.py [--config.x=y]`.

The logic lives in `jaxdd.train` so that it can be imported from notebooks and tests.
"""

import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

# Config files import `configs.default`; make the repository's `configs` package importable
# wherever the command is run from.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from jaxdd import train  # noqa: E402

config_flags.DEFINE_config_file(
    "config",
    str(_REPO / "configs" / "digits.py"),
    "Config file (ml_collections).",
    lock_config=True,
)
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
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or default_workdir(config)
    try:
        result = train.distill_run(config, workdir)
    except train.Interrupted as e:
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
