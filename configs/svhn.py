"""SVHN (32x32x3) from TFDS 'svhn_cropped' (prepare it once with `tfds build svhn_cropped`).

Optional `:dc` / `:dm` after the file name for those methods' settings (configs/default.py).
"""

from configs import default


def get_config(method: str = "dsa"):
    # House numbers are not symmetric: no flips.
    config = default.without_flips(default.get_config(method, "tfds:svhn_cropped"))
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
