"""Fashion-MNIST (28x28x1) from the Debian package dataset-fashion-mnist.

The published protocol of the method (default DSA; `:dc` or `:dm` after the file name):
DC's ConvNet (padding-3 first conv, PyTorch init), DC's schedule and learning rates, 1000
iterations (DM: 20,000), 1000 evaluation epochs with augmentation.
"""

from configs import default


def get_config(method: str = "dsa"):
    config = default.get_config(method, "fashion_mnist")
    config.cluster.num_clusters = 4
    config.match.group_batch = 8  # Bounds memory at this image size (see configs/default.py).
    return config
