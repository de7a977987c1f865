"""SVHN (32x32x3) from TFDS 'svhn_cropped' (prepare it once with `tfds build svhn_cropped`)."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "tfds:svhn_cropped"
    config.match.augment = "color_crop_cutout_scale_rotate"  # House numbers are not symmetric.
    config.eval.augment = "color_crop_cutout_scale_rotate"
    # Groups matched 8 at a time (lax.map over vmapped chunks): all 40 at once needs 8 GiB of
    # XLA temporaries at 28x28 and 21 GiB at 32x32x3 (IPC 1); 8 at a time 1.9 and 4.3 GiB.
    config.match.group_batch = 8
    return config
