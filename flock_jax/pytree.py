"""The one alias for "a nested structure of arrays" used across flock_jax."""

from typing import Any

PyTree = Any  # dicts / lists / tuples of jax or numpy arrays (jax.tree_util's pytrees)
