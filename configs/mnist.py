"""MNIST (28x28x1): IDX files in data.dir, else TFDS 'mnist'."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "mnist"
    config.match.augment = "color_crop_cutout_scale_rotate"  # No flips for digits.
    config.eval.augment = "color_crop_cutout_scale_rotate"
    # Groups matched 8 at a time (lax.map over vmapped chunks): all 40 at once needs 8 GiB of
    # XLA temporaries at 28x28 and 21 GiB at 32x32x3 (IPC 1); 8 at a time 1.9 and 4.3 GiB.
    config.match.group_batch = 8
    return config
