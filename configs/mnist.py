"""MNIST (28x28x1): IDX files in data.dir, else TFDS 'mnist'."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "mnist"
    config.match.augment = "color_crop_cutout_scale_rotate"  # No flips for digits.
    config.eval.augment = "color_crop_cutout_scale_rotate"
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
