"""Exports a run's synthetic set for people who do not use jaxdd.

  python -m jaxdd.export --synthetic=runs/<run> [--out=DIR]
  jaxdd export --synthetic=runs/<run>/synthetic_last.npz --out=my_set

Writes DIR/images/<class>/<index>.png and DIR/synthetic.npz: `images` (N, C, H, W) float32 in
[0, 1], `labels`, the per-channel `mean`/`std` it was distilled under, `class_names` (see
`jaxdd.sets.export`; the README shows how to load it in PyTorch). DIR defaults to
`<run>/export` and must not exist or be empty.
"""

import pathlib

from absl import app, flags

from jaxdd import artifacts, cli, errors, sets

flags.DEFINE_string("synthetic", None, "A run's workdir or a synthetic.npz it wrote.")
flags.DEFINE_string("out", "", "The folder to write; default <run>/export.")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; pass --synthetic=RUN and --out=DIR.")
    cli.quiet()
    path = flags.FLAGS.synthetic
    if not path:
        cli.fail("pass --synthetic=RUN: a run's workdir or its synthetic.npz.")
    path = pathlib.Path(path).expanduser()
    out = pathlib.Path(flags.FLAGS.out or (path if path.is_dir() else path.parent) / "export")
    try:
        with errors.user_input():
            synthetic = artifacts.load_synthetic(path)
            written = sets.export(synthetic, out)
    except (*cli.USER_ERRORS, FileExistsError) as e:
        cli.fail(str(e))
    print(
        f"wrote {out}/images/<class>/*.png ({len(synthetic.labels)} images) and "
        f"{out}/synthetic.npz ((N, C, H, W) in [0, 1]); "
        f"{100 * written['clipped_fraction']:.2f} % of pixel values clipped to [0, 1]"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
