"""jaxdd: group-distributionally-robust dataset distillation in JAX/Flax.

Data flow, one module each: `data` -> `clustering` (subgroups) -> `matching` (per-group
losses) -> `risk` (CVaR) -> `distill` (the jitted step) -> `evaluate` / `robustness`.

Python API:
  jaxdd.distill(config, workdir)            run a distillation (as `python -m jaxdd.main`);
  jaxdd.evaluate(config, images, labels)    SPEC's test protocol on a synthetic set;
  jaxdd.load_synthetic(path)                read a run's synthetic.npz;
  jaxdd.cvar / jaxdd.mean / jaxdd.worst     risk measures for any JAX code.
`jaxdd.distill` and `jaxdd.evaluate` are also the modules of those names (callable).
"""

from jaxdd import distill, evaluate
from jaxdd.risk import cvar, mean, worst
from jaxdd.train import load_synthetic

__all__ = ["cvar", "distill", "evaluate", "load_synthetic", "mean", "worst"]
__version__ = "0.1.0"
