"""A tiny grouped problem on the real code path, shared by the step and krr tests."""

import jax
import numpy as np

from jaxdd import build, step
from jaxdd import groups as groups_lib

IMAGE_SHAPE = (8, 8, 1)


def three_classes(config):
    """(model, real, labels): 3 classes x 2 clusters of 12 random 8x8 images each (class c's
    shifted by c, so that classes differ), the config's model over them."""
    num_classes, per_class = 3, 12
    images = jax.random.normal(jax.random.key(0), (num_classes * per_class, *IMAGE_SHAPE))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.arange(per_class) % 2, num_classes)
    groups = groups_lib.make_groups(labels, assignments, num_classes=num_classes, num_clusters=2)
    model = build.create_model(config, num_classes, IMAGE_SHAPE)
    real = step.RealData(images=images + labels[:, None, None, None], groups=groups)
    return model, real, labels
