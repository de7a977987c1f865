"""CIFAR-10 (32x32x3) from TFDS 'cifar10'. Optional `:dc` / `:dm` (configs/default.py)."""

from configs import default


def get_config(method: str = "dsa"):
    config = default.get_config(method, "tfds:cifar10")
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
