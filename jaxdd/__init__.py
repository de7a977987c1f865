"""jaxdd: group-distributionally-robust dataset distillation in JAX/Flax.

Data flow, one module each: `data` -> `clustering` (subgroups) -> `matching`
(per-group losses) -> `risk` (CVaR) -> `distill` (the jitted step) -> `evaluate`.
"""

from jaxdd.risk import cvar, mean, worst

__all__ = ["cvar", "mean", "worst"]
__version__ = "0.1.0"
