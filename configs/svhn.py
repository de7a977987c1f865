"""SVHN (32x32x3) from TFDS 'svhn_cropped' (prepare it once with `tfds build svhn_cropped`)."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "tfds:svhn_cropped"
    config.match.augment = "color_crop_cutout_scale_rotate"  # House numbers are not symmetric.
    config.eval.augment = "color_crop_cutout_scale_rotate"
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
