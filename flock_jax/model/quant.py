"""An int8 weight-only frozen base: per-output-channel scales, dequantized in the matmul.

  quantize_params(params) -> params with every decoder projection
    params['layers'][name] = {'q': int8 [L, in, out], 'scale': float32 [L, out]}

w ≈ q * scale with scale = max_i |w[i, o]| / 127 per output channel o (symmetric,
round to nearest): the per-element error is at most scale / 2. The matmul
dequantizes on the fly, x @ (q * s) = (x @ q) * s, so no float copy of the
whole base ever exists: `dense_int8` converts q to the compute dtype inside the
jitted step, accumulates in float32 and applies the scale to the [.., out]
result. Embeddings, norms and the lm head stay in their float dtype (at 70B the
projections are 98% of the weights). The base is frozen, so only dx is formed
in the backward pass; LoRA adapters (float32 masters) are unaffected.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flock_jax.model.layers import acc_dtype

QMAX = 127.0


def is_quantized(w: Any) -> bool:
  """True for an int8 {'q', 'scale'} projection, False for a float array."""
  return isinstance(w, dict) and "q" in w and "scale" in w


def quantize(w: jax.Array) -> dict:
  """w [..., in, out] (float) -> {'q': int8 [..., in, out], 'scale': float32 [..., out]}."""
  w32 = w.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w32), axis=-2)
  scale = jnp.where(amax > 0, amax / QMAX, 1.0)
  q = jnp.clip(jnp.round(w32 / scale[..., None, :]), -QMAX, QMAX).astype(jnp.int8)
  return {"q": q, "scale": scale}


def dequantize(w: dict, dtype=jnp.float32) -> jax.Array:
  """{'q', 'scale'} -> q * scale [..., in, out] in dtype (for export and tests)."""
  return (w["q"].astype(jnp.float32) * w["scale"][..., None, :]).astype(dtype)


def quantize_params(params: dict, names: tuple[str, ...] | None = None) -> dict:
  """The base with the decoder projections `names` (default: all seven) stored as int8 +
  per-channel scales. Jitted, so a sharded base stays sharded."""
  from flock_jax.model.llama import PROJECTIONS  # llama imports this module

  names = PROJECTIONS if names is None else names
  layers = dict(params["layers"])
  todo = {n: layers[n] for n in names if n in layers and not is_quantized(layers[n])}
  layers.update(jax.jit(lambda ws: {n: quantize(w) for n, w in ws.items()})(todo))
  return {**params, "layers": layers}


def dequantize_params(params: dict, dtype=jnp.float32) -> dict:
  """The inverse of `quantize_params` (up to the rounding): every projection as a float array."""
  layers = {n: dequantize(w, dtype) if is_quantized(w) else w for n, w in params["layers"].items()}
  return {**params, "layers": layers}


def prepare_base(cfg, loaded_cfg, base: dict):
  """(cfg, base) as the run config asks: the numerics of `cfg` (dtype, param_dtype, remat,
  quantize, attention) over the shapes of `loaded_cfg` (what the checkpoint said), the base's
  float leaves cast to param_dtype and, with quantize='int8', its projections quantized."""
  cfg = loaded_cfg.replace(
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      remat=cfg.remat,
      quantize=cfg.quantize,
      attention=cfg.attention,
  )
  dt = cfg.storage_dtype
  cast = lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dt else x
  base = jax.tree.map(lambda x: x if is_quantized(x) else cast(x), base, is_leaf=is_quantized)
  if cfg.quantize == "int8":
    base = quantize_params(base)
  return cfg, base


def int8_matmul(x, q, scale):
  """x [..., in] @ (q int8 [in, out] * scale [out]) -> [..., out], unrounded: q converted
  to x.dtype, the dot accumulated in float32 (or wider) and the scale applied to its result."""
  acc = acc_dtype(x.dtype)
  y = jnp.einsum("...i,io->...o", x, q.astype(x.dtype), preferred_element_type=acc)
  return y * scale.astype(acc)


def int8_matmul_t(dy, q, scale):
  """dy [..., out] @ (q * scale)^T -> [..., in], unrounded: dX of `int8_matmul`, the scale
  applied to dy (rounded to dy's dtype for the matmul)."""
  acc = acc_dtype(dy.dtype)
  ds = (dy.astype(acc) * scale.astype(acc)).astype(dy.dtype)
  return jnp.einsum("...o,io->...i", ds, q.astype(dy.dtype), preferred_element_type=acc)


@jax.custom_vjp
def dense_int8(x, q, scale):
  """x [..., in] @ (q int8 [in, out] * scale [out]) -> [..., out] in x.dtype.

  q is converted to x.dtype inside the step (XLA fuses nothing into the dot on
  CPU, so one [in, out] compute-dtype copy lives per layer, never the whole
  base), the dot accumulates in float32 and the scale multiplies its result.
  """
  return int8_matmul(x, q, scale).astype(x.dtype)


def _dense_int8_fwd(x, q, scale):
  return dense_int8(x, q, scale), (q, scale)


def _dense_int8_bwd(res, dy):
  q, scale = res
  # the base is frozen: no gradient for q or its scales
  return int8_matmul_t(dy, q, scale).astype(dy.dtype), None, None


dense_int8.defvjp(_dense_int8_fwd, _dense_int8_bwd)
