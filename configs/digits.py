"""scikit-learn digits (8x8, embedded, no download): the default config, < 10 min on 2 CPU cores."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "digits"
    config.num_steps = 200
    config.cluster.num_clusters = 4
    config.match.num_real = 32  # Digits groups hold ~30 train images each.
    config.match.augment = "color_crop_cutout_scale_rotate"  # No flips: digits are not symmetric.
    config.eval.augment = "color_crop_cutout_scale_rotate"
    return config
