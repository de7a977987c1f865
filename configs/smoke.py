"""A tiny end-to-end run for tests: digits, narrow network, a few iterations, short evaluation."""

from configs import digits


def get_config():
    config = digits.get_config()
    config.ipc = 2
    config.num_iterations = 4
    config.model.width = 16
    config.cluster.num_clusters = 2
    config.match.num_real = 8
    config.match.outer_loop = 2
    config.match.inner_loop = 2
    config.match.unroll_steps = 2
    config.eval.num_models = 2
    config.eval.epochs = 4
    config.eval.select_every = 2
    config.eval.global_k = 3
    config.eval.per_class_k = 2
    config.log.every = 2
    config.checkpoint.every = 2
    return config
