"""The Vyper compile step and its cache."""

from flock_jax.chain import compile as compile_mod


def test_compile_caches_by_source_hash(tmp_path, monkeypatch):
  monkeypatch.setenv("FLOCK_JAX_CACHE", str(tmp_path))
  src = "#pragma version ^0.4.3\n@external\n@pure\ndef f() -> uint256:\n    return 7\n"
  a = compile_mod.compile_source("Tiny", src)
  files = list((tmp_path / "vyper").glob("Tiny-*.json"))
  assert len(files) == 1 and a.bytecode.startswith("0x") and a.abi[0]["name"] == "f"
  b = compile_mod.compile_source("Tiny", src)
  assert b == a
  compile_mod.compile_source("Tiny", src.replace("7", "8"))
  assert len(list((tmp_path / "vyper").glob("Tiny-*.json"))) == 2


def test_contracts_compile(compiled):
  token, task = compiled
  names = {i.get("name") for i in task.abi}
  for n in (
      "stake",
      "unstake",
      "start_round",
      "draw_roles",
      "commit_proposal",
      "reveal_proposal",
      "commit_vote",
      "reveal_vote",
      "finalize",
      "close",
      "claim",
      "withdraw",
  ):
    assert n in names
  assert len(task.bytecode) // 2 - 1 <= 24_576  # EIP-170, with room for the blueprint preamble
