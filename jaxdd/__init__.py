"""jaxdd: group-distributionally-robust dataset distillation in JAX/Flax.

Data flow, one module each: `data` -> `groups` (subgroups by `clustering`) -> `matching`
(per-group losses) -> `risk` (CVaR) -> `step` (the jitted update of the `synthetic` set) ->
`retrain` / `robustness` / `report` (evaluation); `build` makes these from a config, `run` is
the loop, `artifacts` the files, `checkpoint` and `sharding` the host concerns.

Python API:
  jaxdd.distill(config, workdir)            run a distillation (as `python -m jaxdd.main`);
  jaxdd.evaluate(config, images, labels)    SPEC's test protocol on a synthetic set;
  jaxdd.load_synthetic(path)                read a run's synthetic.npz;
  jaxdd.load_config(path, *overrides)       read a config file (as `--config=path`);
  jaxdd.cvar / jaxdd.mean / jaxdd.worst     risk measures for any JAX code.
"""

from jaxdd.artifacts import load_synthetic
from jaxdd.config import load as load_config
from jaxdd.report import evaluate
from jaxdd.risk import cvar, mean, worst
from jaxdd.run import distill

__all__ = ["cvar", "distill", "evaluate", "load_config", "load_synthetic", "mean", "worst"]
__version__ = "0.1.0"
