"""Every parameter of each preset gets the intended PartitionSpec (abstract shapes only)."""

import jax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from flock_jax import sharding as S
from flock_jax.model import LoraConfig, abstract_params, lora_axes, param_axes, preset

MESH_4x2 = {"clients": 1, "data": 1, "fsdp": 4, "tensor": 2}
MESH_F8 = {"fsdp": 8}

# The design, written out: vocab and heads/mlp on 'tensor', the hidden (embed) dim on
# 'fsdp', the layer axis and norms never sharded.
INTENDED_4x2 = {
    "embed": P("tensor", "fsdp"),
    "final_norm": P(None),
    "lm_head": P("fsdp", "tensor"),
    "layers": {
        "attn_norm": P(None, None),
        "mlp_norm": P(None, None),
        "q": P(None, "fsdp", "tensor"),
        "k": P(None, "fsdp", "tensor"),
        "v": P(None, "fsdp", "tensor"),
        "o": P(None, "tensor", "fsdp"),
        "gate": P(None, "fsdp", "tensor"),
        "up": P(None, "fsdp", "tensor"),
        "down": P(None, "tensor", "fsdp"),
    },
}
# Size-1 axes are dropped, so on a pure-FSDP mesh 'tensor' disappears.
INTENDED_F8 = {
    "embed": P(None, "fsdp"),
    "final_norm": P(None),
    "lm_head": P("fsdp", None),
    "layers": {
        "attn_norm": P(None, None),
        "mlp_norm": P(None, None),
        "q": P(None, "fsdp", None),
        "k": P(None, "fsdp", None),
        "v": P(None, "fsdp", None),
        "o": P(None, None, "fsdp"),
        "gate": P(None, "fsdp", None),
        "up": P(None, "fsdp", None),
        "down": P(None, None, "fsdp"),
    },
}


def _without_lm_head(t):
  return {k: v for k, v in t.items() if k != "lm_head"}


def _abstract_mesh(**sizes):
  return AbstractMesh(
      tuple(sizes.get(a, 1) for a in S.MESH_AXES), S.MESH_AXES, axis_types=(AxisType.Auto,) * 4
  )


@pytest.mark.parametrize("name", ["llama3_70b", "llama3_8b", "llama31_70b", "smollm2_135m"])
@pytest.mark.parametrize("shape,intended", [(MESH_4x2, INTENDED_4x2), (MESH_F8, INTENDED_F8)])
def test_preset_specs_and_divisibility(name, shape, intended):
  cfg = preset(name)
  mesh = S.make_mesh(shape)
  specs = S.tree_specs(param_axes(cfg), mesh=mesh)
  want = _without_lm_head(intended) if cfg.tie_word_embeddings else intended
  assert specs == want
  shardings = S.tree_shardings(param_axes(cfg), mesh)
  abstract = abstract_params(cfg)
  assert jax.tree.structure(abstract) == jax.tree.structure(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding)
  )
  S.check_divisible(abstract, shardings)  # raises on any indivisible leaf


def test_specs_without_mesh_keep_every_axis():
  specs = S.tree_specs(param_axes(preset("tiny")))
  assert specs["embed"] == P("tensor", "fsdp")
  assert specs["layers"]["q"] == P(None, "fsdp", "tensor")
  assert specs["lm_head"] == P("fsdp", "tensor")


def test_smollm2_indivisible_hidden_names_the_leaf():
  # hidden 576 = 64 * 9 divides every 8-device mesh; 128-way fsdp (a v5e-256 slice) does not.
  cfg = preset("smollm2_135m")
  shardings = S.tree_shardings(param_axes(cfg), _abstract_mesh(fsdp=128, tensor=2))
  with pytest.raises(S.ShardingError, match=r"\['embed'\].*576.*fsdp.*128"):
    S.check_divisible(abstract_params(cfg), shardings)


def test_indivisible_vocab_on_real_mesh_names_the_leaf():
  cfg = preset("tiny", vocab_size=273)
  shardings = S.tree_shardings(param_axes(cfg), S.make_mesh(MESH_4x2))
  with pytest.raises(S.ShardingError, match=r"\['embed'\].*273.*tensor"):
    S.check_divisible(abstract_params(cfg), shardings)


def test_lora_axes_with_clients():
  cfg, lcfg = preset("llama3_70b"), LoraConfig(rank=16)
  axes = lora_axes(cfg, lcfg, clients=True)
  mesh = S.make_mesh({"clients": 2, "fsdp": 2, "tensor": 2})
  specs = S.tree_specs(axes, mesh=mesh)
  for n in ("q", "k", "v", "gate", "up"):
    assert specs[n] == {
        "a": P("clients", None, "fsdp", None),
        "b": P("clients", None, None, "tensor"),
    }
  for n in ("o", "down"):
    assert specs[n] == {
        "a": P("clients", None, "tensor", None),
        "b": P("clients", None, None, "fsdp"),
    }
  # clients of size 1 is dropped: the stack is then replicated on that (absent) axis.
  assert S.tree_specs(axes, mesh=S.make_mesh(MESH_4x2))["q"]["a"] == P(None, None, "fsdp", None)
  # Without a clients axis the adapters follow the base's projection layout.
  plain = S.tree_specs(lora_axes(cfg, lcfg), mesh=mesh)
  assert plain["q"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor")}


@pytest.mark.parametrize(
    "shape,match",
    [
        ({"fsdp": 3}, r"needs 3 devices, have 8"),
        ({"fsdp": 4, "tensor": 4}, r"needs 16 devices, have 8"),
        ({"model": 8}, r"unknown mesh axes \['model'\]"),
        ({"fsdp": -1, "tensor": -1}, r"at most one mesh axis may be -1"),
        ({"fsdp": 3, "tensor": -1}, r"8 devices cannot fill mesh"),
    ],
)
def test_make_mesh_errors(shape, match):
  with pytest.raises(S.ShardingError, match=match):
    S.make_mesh(shape)


def test_make_mesh_fills_minus_one_and_is_auto():
  mesh = S.make_mesh({"fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"clients": 1, "data": 1, "fsdp": 4, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_unknown_logical_axis_is_named():
  with pytest.raises(S.ShardingError, match="'experts' has no rule"):
    S.logical_to_spec(("experts", "embed"))
