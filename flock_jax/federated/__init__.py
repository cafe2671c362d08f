"""Federated pieces of a FLock round: aggregation rules, canonical hashing, update
validation and voting.

Import the submodules directly (kept light on purpose)::

    from flock_jax.federated import aggregators, hashing, validate, voting
"""
