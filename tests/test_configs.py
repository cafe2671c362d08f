"""configs/flock.py variants build; malformed fields fail with an error naming the field."""

import importlib.util
import pathlib

import json

import pytest

from flock_jax.run_config import RunConfigError, from_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _get_config(arg=None):
  spec = importlib.util.spec_from_file_location("flock_config", ROOT / "configs" / "flock.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.mark.parametrize(
    "variant,preset,vocab",
    [
        (None, "tiny", 272),
        ("tiny", "tiny", 272),
        ("smollm2", "smollm2_135m", 49152),
        ("llama3_8b", "llama3_8b", 128256),
        ("llama3_70b", "llama3_70b", 128256),
    ],
)
def test_variants_build(variant, preset, vocab):
  run = from_config(_get_config(variant))
  assert run.model.preset == preset and run.model.cfg.vocab_size == vocab
  f = run.federation
  assert f.num_proposers + f.num_voters <= f.num_participants
  assert run.optim.total_steps == f.rounds * f.local_steps
  if preset.startswith("llama3"):
    assert run.model.loss_chunk > 0 and run.model.weights.startswith("hf:")


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown config variant 'huge'"):
    _get_config("huge")


def _set(c, dotted, value):
  sec, key = dotted.split(".")
  c[sec][key] = value


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("federation.aggregator", "fedmagic", r"config\.federation\.aggregator='fedmagic'.*krum"),
        (
            "federation.num_voters",
            6,
            r"num_proposers \+ num_voters = 3 \+ 6 = 9 > num_participants = 8",
        ),
        ("optim.lr", -1e-3, r"config\.optim\.lr=-0\.001: must be > 0"),
        ("model.preset", "llama9_1t", r"config\.model\.preset='llama9_1t': unknown model preset"),
        ("lora.rank", 0, r"config\.lora\.rank=0: must be > 0"),
        ("data.domains", "finance,astrology", r"config\.data\.domains: unknown domain 'astrology'"),
        ("lora.targets", "q,qkv", r"config\.lora\.targets: unknown projection 'qkv'"),
        ("federation.vote_mode", "majority", r"config\.federation\.vote_mode='majority'"),
        ("federation.local_steps", 0, r"config\.federation\.local_steps=0: must be >= 1"),
        (
            "attack.behaviours",
            "3:sneaky",
            r"config\.attack\.behaviours: 'sneaky' for participant 3",
        ),
        ("attack.behaviours", "11:nan", r"participant 11 is not in 0\.\.7"),
        ("data.seq_len", 4096, r"config\.data\.seq_len=4096 > the model's max_position_embeddings"),
        ("ledger.stake", 5, r"config\.ledger\.stake=5 < min_stake=10"),
        ("eval.asr_max_new_tokens", -1, r"config\.eval\.asr_max_new_tokens=-1"),
    ],
)
def test_malformed_field_is_named(field, value, match):
  c = _get_config("tiny")
  _set(c, field, value)
  with pytest.raises(RunConfigError, match=match):
    from_config(c)


def test_unknown_field_is_named():
  c = _get_config("tiny")
  with c.unlocked():
    c.optim.learning_rate = 0.1
  with pytest.raises(RunConfigError, match=r"config\.optim\.learning_rate: unknown field"):
    from_config(c)


def test_a_config_from_before_an_optional_field_runs_unchanged():
  c = _get_config("tiny")
  c.eval.asr_max_new_tokens = 12
  assert from_config(c).eval.asr_max_new_tokens == 12
  with c.unlocked():
    del c.eval["asr_max_new_tokens"]
    del c["log"]
  run = from_config(c)
  assert run.eval.asr_max_new_tokens == 0 and run.tensorboard is False


def test_a_workdir_from_before_an_optional_field_continues():
  from flock_jax.run_config import OPTIONAL_FIELDS
  from flock_jax.workdir import config_diff, config_dict

  new = config_dict(_get_config("tiny"))
  old = json.loads(json.dumps(new))
  for dotted in OPTIONAL_FIELDS:
    sec, key = dotted.split(".")
    del old[sec][key]
  assert config_diff(old, new) == []
  changed = json.loads(json.dumps(new))
  changed["federation"]["client_state"] = "fresh"
  assert config_diff(old, changed) == ["federation.client_state: '<absent>' -> 'fresh'"]


def test_overrides_reach_typed_config():
  c = _get_config("tiny")
  c.federation.vote_mode = "per_proposal"
  c.federation.aggregator_hparams = "f=1,multi=true"
  c.attack.behaviours = "0:nan,3:always_reject"
  c.model.overrides = {"num_layers": 1}
  run = from_config(c)
  assert run.federation.vote_mode == "per_proposal"
  assert run.federation.aggregator_hparams == {"f": 1, "multi": True}
  assert run.attack.proposer(0) == "nan" and run.attack.voter(0) == "honest"
  assert run.attack.voter(3) == "always_reject" and run.attack.proposer(3) == "honest"
  assert run.model.cfg.num_layers == 1


def test_attack_fraction_picks_participants():
  c = _get_config("tiny")
  c.attack.fraction = 0.25
  c.attack.proposer = "scale"
  run = from_config(c)
  assert sorted(run.attack.behaviours.values()) == ["scale", "scale"]
