"""Connections to a chain: the in-process eth-tester chain or any JSON-RPC node.

A `Backend` owns a `Web3`, the list of accounts it can send from, and the
one way transactions are sent (`transact`), which turns every revert into a
`RevertError` carrying the contract's reason. `connect(config)` picks one
from a config mapping (see `flock_jax.chain.config`).
"""

from __future__ import annotations

import array
import itertools
import re
import sys
from typing import Any, Mapping, Sequence

from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from .errors import ChainConfigError, ChainConnectionError, ChainError, RevertError

_REASON_PATTERNS = (
    re.compile(r"reverted with reason string '(.*)'", re.S),
    re.compile(r"execution reverted: (.*)", re.S),
    re.compile(r"revert(?:ed)?:? (.*)", re.S),
)


_ERROR_DATA = re.compile(r"0x08c379a0([0-9a-fA-F]{128,})")


def _decoded_error(text: str) -> str | None:
  """The message of an Error(string) revert whose ABI data appears in `text`."""
  m = _ERROR_DATA.search(text)
  if not m:
    return None
  try:
    import eth_abi

    return eth_abi.decode(["string"], bytes.fromhex(m.group(1)[: len(m.group(1)) // 2 * 2]))[0]
  except Exception:  # noqa: BLE001 - not well-formed: fall back to the text patterns
    return None


def revert_reason(exc: BaseException) -> str:
  """The revert message inside a web3 / eth-tester / node exception (decoded from the revert
  data when the exception carries it, so a message with quotes in it comes back whole)."""
  decoded = _decoded_error(str(exc)) or _decoded_error(repr(getattr(exc, "data", "")))
  if decoded:
    return decoded
  texts = [getattr(exc, "message", None), *(str(a) for a in getattr(exc, "args", ()))]
  for text in texts:
    if not text:
      continue
    if isinstance(text, dict):
      text = text.get("message", str(text))
    for pat in _REASON_PATTERNS:
      m = pat.search(str(text))
      if m:
        return _readable(m.group(1).strip().rstrip("'\""))
  return _readable(str(exc))


NO_REASON = "reverted without a message (a failed call into another contract, an unknown function, or out of gas)"


def _readable(reason: str) -> str:
  """An empty revert (eth-tester shows it as b'' and the pattern leaves 'b') says so."""
  return NO_REASON if reason.strip().strip("'\"") in ("", "b", "b'", "0x", "None") else reason


class Backend:
  """A connected chain. `accounts[0]` deploys; `accounts[1:]` are participants."""

  name = "abstract"

  def __init__(self, w3: Web3, accounts: Sequence[str], keys: Mapping[str, bytes] | None = None):
    self.w3 = w3
    self.accounts = [Web3.to_checksum_address(a) for a in accounts]
    self._keys = dict(keys or {})
    self.chain_id = w3.eth.chain_id

  # ------------------------------------------------------------ transactions
  def transact(self, what: str, fn: Any, sender: str, gas: int, detail: str = "") -> Any:
    """Send contract call `fn` from `sender` with an explicit gas limit.

    Returns the receipt. Raises `RevertError` (named `what`) on a revert,
    whether the node refuses the transaction or mines it with status 0.
    """
    try:
      if sender in self._keys:
        tx = fn.build_transaction(
            {
                "from": sender,
                "gas": gas,
                "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
            }
        )
        signed = self.w3.eth.account.sign_transaction(tx, self._keys[sender])
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
      else:
        tx_hash = fn.transact({"from": sender, "gas": gas})
      receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.01)
    except (ContractLogicError, Web3RPCError, ValueError) as e:
      raise RevertError(what, revert_reason(e), sender, detail) from None
    except Exception as e:  # eth-tester raises its own TransactionFailed
      if type(e).__name__ == "TransactionFailed":
        raise RevertError(what, revert_reason(e), sender, detail) from None
      raise
    if receipt["status"] != 1:
      raise RevertError(what, self._replay_reason(receipt), sender, detail)
    return receipt

  def _replay_reason(self, receipt: Any) -> str:
    """Re-run a failed transaction as a call to read its revert reason."""
    tx = self.w3.eth.get_transaction(receipt["transactionHash"])
    if receipt["gasUsed"] >= tx["gas"]:
      return f"out of gas (limit {tx['gas']})"
    call = {"from": tx["from"], "data": tx["input"], "gas": tx["gas"], "value": tx.get("value", 0)}
    if tx.get("to"):
      call["to"] = tx["to"]
    try:
      # A reverted transaction leaves the contracts' state as it was, so
      # the call runs on its own block's state with its block number.
      self.w3.eth.call(call, receipt["blockNumber"])
    except Exception as e:  # noqa: BLE001 - any failure carries the reason
      return revert_reason(e)
    return f"reverted with status 0 after {receipt['gasUsed']} gas (the replay did not revert)"

  # ------------------------------------------------------------ blocks
  def mine(self, n: int = 1) -> None:
    """Mine `n` empty blocks (to pass a vote window)."""
    raise NotImplementedError

  def snapshot(self) -> Any:
    """Save the chain state; `revert(snapshot)` returns to it."""
    raise NotImplementedError

  def revert(self, snap: Any) -> None:
    raise NotImplementedError

  def close(self) -> None:
    """Release the connection (nothing to do for most backends)."""


GENESIS_TIMESTAMP = 1_700_000_000  # fixed, so that a run's block hashes are reproducible
BLOCK_SECONDS = 12


_KV_MAGIC = b"\xffkv2"  # the first byte of a version-1 dump (a big-endian count) is 0


def _pack_kv(kv: Mapping[bytes, bytes]) -> bytes:
  """A key-value store as bytes, keys sorted (the same store gives the same bytes):
  magic, count (8 bytes), key lengths and value lengths (4 bytes each, big-endian), then
  every key, then every value. Built from whole arrays: about 2x faster than a record at a
  time (the first format) at N = 1000 participants (83k keys, 24 MB)."""
  keys = sorted(kv)
  values = [kv[k] for k in keys]
  lengths = array.array("I", [len(k) for k in keys] + [len(v) for v in values])
  if sys.byteorder == "little":
    lengths.byteswap()
  head = _KV_MAGIC + len(keys).to_bytes(8, "big")
  return b"".join([head, lengths.tobytes(), b"".join(keys), b"".join(values)])


def _unpack_kv(data: bytes) -> dict[bytes, bytes]:
  """`_pack_kv`'s inverse; also reads version 1 (count, then length-prefixed key and value
  records), which earlier checkpoints hold."""
  if not data.startswith(_KV_MAGIC):
    kv, pos = {}, 8
    for _ in range(int.from_bytes(data[:8], "big")):
      n = int.from_bytes(data[pos : pos + 4], "big")
      k = data[pos + 4 : pos + 4 + n]
      pos += 4 + n
      n = int.from_bytes(data[pos : pos + 4], "big")
      kv[k] = data[pos + 4 : pos + 4 + n]
      pos += 4 + n
    if pos != len(data):
      raise ValueError(f"{len(data) - pos} trailing bytes")
    return kv
  count = int.from_bytes(data[4:12], "big")
  lengths = array.array("I")
  lengths.frombytes(data[12 : 12 + 8 * count])
  if len(lengths) != 2 * count:
    raise ValueError(f"{len(lengths)} lengths for {count} entries")
  if sys.byteorder == "little":
    lengths.byteswap()
  ends = list(itertools.accumulate(lengths, initial=12 + 8 * count))
  if ends[-1] != len(data):
    raise ValueError(f"{len(data)} bytes where the lengths say {ends[-1]}")
  keys = [data[a:b] for a, b in zip(ends[:count], ends[1 : count + 1])]
  values = [data[a:b] for a, b in zip(ends[count:-1], ends[count + 1 :])]
  return dict(zip(keys, values))


def _deterministic_pyevm():
  """eth-tester's py-evm backend with every block's timestamp (parent + 12 s) and prevrandao
  (keccak of the parent's hash) a pure function of its parent. Stock eth-tester takes them
  from the wall clock and os.urandom, so the same transactions gave other block hashes (and
  another prevrandao) in every process: no run could be reproduced or resumed bit for bit."""
  from eth_tester import PyEVMBackend
  from eth_tester.backends.pyevm.main import get_total_blob_gas
  from eth_utils import keccak

  class DeterministicPyEVMBackend(PyEVMBackend):

    def reset_to_genesis(self, *args, **kwargs):
      super().reset_to_genesis(*args, **kwargs)
      self._pin()

    def _pin(self) -> None:
      chain = self.chain
      create = type(chain).create_header_from_parent.__get__(chain)

      def from_parent(parent, **params):
        params.setdefault("timestamp", parent.timestamp + BLOCK_SECONDS)
        params.setdefault("mix_hash", keccak(b"flock_jax prevrandao" + parent.hash))
        return create(parent, **params)

      chain.create_header_from_parent = from_parent
      chain.header = from_parent(chain.get_canonical_head())

    def mine_blocks(self, num_blocks=1, coinbase=b"\x00" * 20):
      out = []
      for _ in range(num_blocks):
        txs = self.chain.get_block().transactions
        blob_gas = sum(get_total_blob_gas(tx) for tx in txs)
        out.append(self.chain.mine_block(coinbase=coinbase, blob_gas_used=blob_gas).hash)
      return tuple(out)

    # The whole chain (every block and state) is a key-value store in memory; these two
    # carry it across processes, so a killed run continues on the very same chain.
    def dump_state(self) -> bytes:
      return _pack_kv(self.chain.chaindb.db.wrapped_db.kv_store)

    def load_state(self, data: bytes) -> None:
      from eth.db.atomic import AtomicDB
      from eth.db.backends.memory import MemoryDB

      try:
        kv = _unpack_kv(data)
      except Exception as e:  # noqa: BLE001 - any decoding failure means a broken snapshot
        raise ChainError(f"the saved eth-tester chain state is broken ({e})") from None
      self.chain = type(self.chain)(AtomicDB(MemoryDB(kv)))
      self._pin()

  return DeterministicPyEVMBackend


class EthTesterBackend(Backend):
  """The in-process chain (eth-tester + py-evm, Prague, automine on), deterministic: the same
  transactions give the same blocks, hashes and prevrandao in any process."""

  name = "eth_tester"

  def __init__(self, num_accounts: int = 10, state: bytes | None = None):
    from eth_tester import EthereumTester, PyEVMBackend
    from eth_tester.backends.pyevm.main import get_default_genesis_params
    from web3 import EthereumTesterProvider

    genesis = PyEVMBackend.generate_genesis_state(num_accounts=max(num_accounts, 2))
    params = get_default_genesis_params({"timestamp": GENESIS_TIMESTAMP})
    self.evm = _deterministic_pyevm()(genesis_parameters=params, genesis_state=genesis)
    if state is not None:
      self.evm.load_state(state)
    self.tester = EthereumTester(self.evm)
    w3 = Web3(EthereumTesterProvider(self.tester))
    super().__init__(w3, self.tester.get_accounts())

  def dump_state(self) -> bytes:
    """The whole chain as bytes (`EthTesterBackend(n, state=...)` continues from it)."""
    return self.evm.dump_state()

  def mine(self, n: int = 1) -> None:
    self.tester.mine_blocks(n)

  def snapshot(self) -> Any:
    return self.tester.take_snapshot()

  def revert(self, snap: Any) -> None:
    self.tester.revert_to_snapshot(snap)


class JsonRpcBackend(Backend):
  """Any JSON-RPC node. Sends from its unlocked accounts, or signs locally
  when `private_keys` are given (then those keys' accounts are used)."""

  name = "jsonrpc"

  def __init__(self, url: str, private_keys: Sequence[str | bytes] = (), timeout: float = 30.0):
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    try:
      w3.eth.block_number
    except Exception as e:  # noqa: BLE001
      raise ChainConnectionError(
          f"cannot reach a JSON-RPC node at {url}: {e}; start one or fix chain.rpc_url"
      ) from None
    keys = {}
    for k in private_keys:
      acct = w3.eth.account.from_key(k)
      keys[acct.address] = acct.key
    accounts = list(keys) if keys else w3.eth.accounts
    super().__init__(w3, accounts, keys)
    self.url = url

  def _rpc(self, method: str, params: list) -> Any:
    resp = self.w3.provider.make_request(method, params)
    if "error" in resp:
      raise ChainError(f"{method}: {resp['error']}")
    return resp.get("result")

  def mine(self, n: int = 1) -> None:
    try:
      self._rpc("hardhat_mine", [hex(n)])
    except ChainError:
      for _ in range(n):
        self._rpc("evm_mine", [])

  def snapshot(self) -> Any:
    return self._rpc("evm_snapshot", [])

  def revert(self, snap: Any) -> None:
    self._rpc("evm_revert", [snap])


def connect(config: Mapping[str, Any], num_accounts: int = 10) -> Backend:
  """Open the backend named by ``config["backend"]``: "eth_tester" or "jsonrpc"."""
  kind = config.get("backend", "eth_tester")
  if kind == "eth_tester":
    return EthTesterBackend(num_accounts, state=config.get("state"))
  if kind == "jsonrpc":
    url = config.get("rpc_url")
    if not url:
      raise ChainConfigError(
          "chain.backend='jsonrpc' needs chain.rpc_url, e.g. http://127.0.0.1:8545"
      )
    return JsonRpcBackend(url, tuple(config.get("private_keys") or ()))
  raise ChainConfigError(f"unknown chain.backend {kind!r}; use 'eth_tester' or 'jsonrpc'")
