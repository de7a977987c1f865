"""Scores anyone's synthetic set under a config's protocol, beside the random real subset.

  python -m jaxdd.score --config=configs/digits.py --synthetic=PATH [--workdir=DIR]
  jaxdd evaluate --config=configs/fashion_mnist.py --synthetic=dc_fmnist_ipc10.npz
  jaxdd evaluate --config=configs/fashion_mnist.py --synthetic=RUN --protocol=frepo

PATH is a run's workdir or synthetic.npz, an .npz of pixels (PyTorch's (N, C, H, W) layout
too) or a folder of class sub-folders (`jaxdd.sets.read` says exactly what is accepted). The
set and a random real subset with the same number of images per class are each scored by
`eval.num_models` networks trained from scratch under the config's evaluation (epochs,
augmentation, learning rate, seeds); the test report of both and the gain are printed and
written to DIR/eval.json (default `runs/score-<dataset>-<set name>`), which is never
overwritten. The label type (hard: one class per image) is stated in both. `--protocol=frepo`
scores both under FRePo's evaluation instead (`jaxdd.config.frepo_evaluation` for the set's
size), to compare with numbers FRePo's code published.
"""

import json
import pathlib
import sys

from absl import app, flags

from jaxdd import build, cli, errors, report, sets
from jaxdd import config as config_lib

_CONFIG = cli.config_flag()
flags.DEFINE_string("synthetic", None, "The set: a run's workdir, an .npz or an image folder.")
flags.DEFINE_string("workdir", "", "Where eval.json goes; default runs/score-<dataset>-<set>.")
flags.DEFINE_enum(
    "protocol",
    "config",
    ["config", "frepo"],
    "config: the config's eval section; frepo: FRePo's evaluation (jaxdd.config.frepo_evaluation).",
)


def _line(name: str, result: dict) -> str:
    return (
        f"{name}: test accuracy {result['accuracy_mean']:.2f} +- {result['accuracy_std']:.2f} %, "
        f"worst group {result.get('worst_group_accuracy', float('nan')):.2f} %, worst class "
        f"{result['worst_class_accuracy']:.2f} %"
    )


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; pass the set as --synthetic=PATH.")
    cli.quiet()
    cli.compilation_cache()
    config, path = _CONFIG.value, flags.FLAGS.synthetic
    if not path:
        cli.fail("pass --synthetic=PATH: a run's workdir, an .npz or a folder of class folders.")
    try:
        with errors.user_input():
            config_lib.validate(config)
            dataset, rare = build.load_data(config)
            foreign = sets.read(path, dataset)
            if flags.FLAGS.protocol == "frepo":
                config = config_lib.frepo_evaluation(config, len(foreign.labels))
    except cli.USER_ERRORS as e:
        cli.fail(str(e))
    name = pathlib.Path(path).expanduser().resolve()
    name = name.parent.name if name.name == "synthetic.npz" else name.stem
    workdir = pathlib.Path(flags.FLAGS.workdir or f"runs/score-{dataset.name}-{name}")
    if (workdir / "eval.json").exists():
        cli.fail(f"{workdir / 'eval.json'} exists; pass another --workdir or remove it first.")
    per_class = foreign.per_class.tolist()
    print(
        f"{path}: {len(foreign.labels)} images ({foreign.source}, {foreign.label_type} labels, "
        f"{min(per_class)}-{max(per_class)} per class); {dataset.name} test split, "
        f"{config.eval.num_models} networks each",
        flush=True,
    )
    result = report.compare_with_random(config, dataset, rare, foreign.images, foreign.labels)
    result.update(
        synthetic=str(path),
        source=foreign.source,
        label_type=foreign.label_type,
        images_per_class=per_class,
        dataset=dataset.name,
        config=json.loads(config.to_json_best_effort()),
    )
    result["random_real"]["label_type"] = "hard"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    gain = result["gain"]
    print(
        _line("set", result["set"])
        + "\n"
        + _line("random real subset of the same size", result["random_real"])
        + f"\ngain over random: {gain['accuracy_mean']:+.2f} points"
        + (
            f" (worst group {gain['worst_group_accuracy']:+.2f})"
            if "worst_group_accuracy" in gain
            else ""
        )
        + f"\nwrote {workdir / 'eval.json'}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
