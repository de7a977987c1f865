"""Command-line launcher: `python -m jaxdd.main --config=configs/digits.py [--config.x=y]`.

The logic lives in `jaxdd.run` so that it can be imported from notebooks and tests; config
files load through `jaxdd.config` (no `sys.path` edits, from any working directory).

A person sees a three-line header, the progress bar and the result; logging and errors as
every jaxdd program (`jaxdd.cli`). Also `jaxdd distill` (the console script).
"""

import pathlib
import sys

from absl import app, flags

from jaxdd import cli, run

_CONFIG = cli.config_flag()
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
        cli.fail(f"unexpected arguments {argv[1:]}; settings are flags such as --config.ipc=1.")
    cli.quiet()
    cli.compilation_cache()
    config = _CONFIG.value
    if config is None:
        cli.fail("pass --config=path/to/configs/<name>.py (e.g. configs/digits.py).")
    workdir = flags.FLAGS.workdir or default_workdir(config)
    try:
        result = run.distill(config, workdir)
    except run.Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except cli.USER_ERRORS as e:
        cli.fail(str(e))
    report = result.report
    print(
        f"test accuracy {report['accuracy_mean']:.2f} +- {report['accuracy_std']:.2f} % "
        f"({report['num_models']} networks), worst group "
        f"{report.get('worst_group_accuracy', float('nan')):.2f} %, worst class "
        f"{report['worst_class_accuracy']:.2f} %; selected step {report['selected_step']}\n"
        f"wrote {result.workdir}: synthetic.npz, synthetic.png, eval.json, metrics.jsonl"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
