"""Fashion-MNIST (28x28x1) from the Debian package dataset-fashion-mnist."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "fashion_mnist"
    config.num_steps = 1000
    config.cluster.num_clusters = 4
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
