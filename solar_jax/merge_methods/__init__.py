"""Merge methods as a registry: one module per method, each declaring its parameters,
arity, base model and tensor function in one `MergeMethod` record (see base.py).

    from solar_jax import merge_methods
    merge_methods.get("ties").params      # what the CLI, the API and recipes all read
"""

from solar_jax.merge_methods.base import (REQUIRED, MergeMethod, Param, get, methods, names,
                                          register)
# Importing a method's module registers it; this order is the order help lists them in.
from solar_jax.merge_methods import (linear, slerp, task_arithmetic, ties,  # noqa: F401
                                     model_stock, passthrough)

__all__ = ["MergeMethod", "Param", "REQUIRED", "get", "methods", "names", "register"]
