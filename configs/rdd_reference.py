"""The robust-DD reference algorithm's mode, its defects fixed: `configs/rdd_reference.py:digits`.

`Mming11/RobustDatasetDistillation` (`distill_rdd.py` 160-262, `new_strategy.py`
`Cluster_Strategy`, `utils.py` 483-590) keeps DC's per-class gradient matching and puts its
robustness into the matched network: between image updates the network trains on real images
with mean cross-entropy plus the mean and the max over subgroups of each subgroup's CVaR, the
subgroups being the Voronoi cells of the synthetic images in the network's embedding,
recomputed every update. There that term is built from detached copies (it never reaches the
network's gradient), sorted ascending (the lower tail), drops cells whose CVaR is 0 and assigns
real images to synthetic images of any class. Here, as SPEC's second mode: cells of the same
class, the upper tail, with gradient, every cell kept (`jaxdd.groups.voronoi_groups`,
`jaxdd.step.robust_network_loss`).

The argument names the dataset's shipped config whose data, model and budget are kept
(`digits`, `fashion_mnist`, ...). The matching is ERM over the cells (`robust.risk=mean`, as the
reference's); `robust.alpha` is the cells' CVaR tail mass, the reference's default 0.8.
Compare with jaxdd's own formulation, `robust.risk=cvar` over K-means groups (the dataset's
config itself).
"""

import importlib


def get_config(base: str = "digits"):
    config = importlib.import_module(f"configs.{base}").get_config()
    config.cluster.assign = "voronoi"
    config.cluster.pool = 256  # The reference's batch_real per class.
    config.match.net_train = "real_robust"
    config.robust.risk = "mean"
    config.robust.alpha = 0.8  # The reference's --alpha.
    config.syn.init = "real"  # The reference's random real images (Voronoi cells, no K-means).
    return config
