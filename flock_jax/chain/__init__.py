"""The on-chain half of flock_jax: contracts, a client, a settlement model and an audit.

`FlockChain` is the one interface to the chain (in-process eth-tester or a
JSON-RPC node); `AdapterStore` holds the blobs whose hashes go on chain;
`audit` rebuilds a run from its logs and checks it. See docs/chain.md.
"""

from .client import FlockChain, as_hash, bits_of, hash_bytes
from .factory import FlockFactory
from .errors import ChainConfigError, ChainConnectionError, ChainError, RevertError
from .store import AdapterStore, StoreError
from .types import (
    OUTCOME_ACCEPTED,
    OUTCOME_REJECTED,
    OUTCOME_VOID,
    SELECT_STAKE,
    SELECT_UNIFORM,
    VOTE_PER_PROPOSAL,
    VOTE_WHOLE,
    WEI,
    Balances,
    Outcome,
    Roles,
    TaskParams,
)

__all__ = [
    "AdapterStore",
    "Balances",
    "ChainConfigError",
    "ChainConnectionError",
    "ChainError",
    "FlockChain",
    "FlockFactory",
    "OUTCOME_ACCEPTED",
    "OUTCOME_REJECTED",
    "OUTCOME_VOID",
    "Outcome",
    "RevertError",
    "Roles",
    "SELECT_STAKE",
    "SELECT_UNIFORM",
    "StoreError",
    "TaskParams",
    "VOTE_PER_PROPOSAL",
    "VOTE_WHOLE",
    "WEI",
    "as_hash",
    "bits_of",
    "hash_bytes",
]
