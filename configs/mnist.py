"""MNIST (28x28x1): IDX files in data.dir, else TFDS 'mnist'. Optional `:dc` / `:dm`."""

from configs import default


def get_config(method: str = "dsa"):
    config = default.without_flips(default.get_config(method, "mnist"))  # No flips for digits.
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
