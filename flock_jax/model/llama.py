"""Llama decoder: parameters as a flax.nnx module, the forward pass as pure functions.

The nnx module declares every parameter with its logical axis names (see
flock_jax/sharding.py); training and serving use the pure pytree form
`params = nnx.to_pure_dict(nnx.state(model))`:

  params = {
    'embed':      [V, D]            ('vocab', 'embed')
    'layers': {                     stacked on a leading layer axis L, scanned
      'attn_norm': [L, D], 'mlp_norm': [L, D]
      'q': [L, D, H*Dh], 'k'/'v': [L, D, K*Dh], 'o': [L, H*Dh, D]
      'gate'/'up': [L, D, F], 'down': [L, F, D]
    },
    'final_norm': [D],
    'lm_head':    [D, V]            (absent when embeddings are tied)
  }

Projections are stored (in, out), the transpose of torch's nn.Linear. LoRA
adapters are a separate tree passed to `forward` (flock_jax/model/lora.py);
the merged weight is never materialised in the forward pass.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flock_jax.model import layers as L
from flock_jax.model import quant
from flock_jax.model.config import LlamaConfig
from flock_jax.sharding import with_logical_constraint

Params = dict[str, Any]

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_RESIDUAL = ("batch", "length", "act_embed")


def projection_dims(cfg: LlamaConfig) -> dict[str, tuple[int, int, str, str]]:
  """name -> (in_dim, out_dim, in_logical_axis, out_logical_axis) of each projection."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  return {
      "q": (d, cfg.q_dim, "embed", "q_heads"),
      "k": (d, cfg.kv_dim, "embed", "kv_heads"),
      "v": (d, cfg.kv_dim, "embed", "kv_heads"),
      "o": (cfg.q_dim, d, "q_heads", "embed"),
      "gate": (d, f, "embed", "mlp"),
      "up": (d, f, "embed", "mlp"),
      "down": (f, d, "mlp", "embed"),
  }


class DecoderLayers(nnx.Module):
  """All decoder layers' weights, stacked on a leading 'layers' axis for lax.scan."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    n, d, dt = cfg.num_layers, cfg.hidden_size, cfg.storage_dtype
    init = jax.nn.initializers.normal(cfg.initializer_range)
    self.attn_norm = nnx.Param(jnp.ones((n, d), dt), out_sharding=("layers", "norm"))
    self.mlp_norm = nnx.Param(jnp.ones((n, d), dt), out_sharding=("layers", "norm"))
    for name, (din, dout, ain, aout) in projection_dims(cfg).items():
      setattr(
          self,
          name,
          nnx.Param(init(rngs.params(), (n, din, dout), dt), out_sharding=("layers", ain, aout)),
      )


class Llama(nnx.Module):
  """LlamaForCausalLM. `model(tokens, lora=...)` runs `forward` on the module's own state."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.storage_dtype
    init = jax.nn.initializers.normal(cfg.initializer_range)
    self.embed = nnx.Param(
        init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), dt), out_sharding=("vocab", "embed")
    )
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), dt), out_sharding=("norm",))
    if not cfg.tie_word_embeddings:
      self.lm_head = nnx.Param(
          init(rngs.params(), (cfg.hidden_size, cfg.vocab_size), dt),
          out_sharding=("embed", "vocab"),
      )

  def params(self) -> Params:
    return nnx.to_pure_dict(nnx.state(self, nnx.Param))

  def __call__(self, tokens, **kw):
    return forward(self.params(), tokens, self.cfg, **kw)


# ------------------------------------------------------------------ init & metadata
def _abstract_state(cfg: LlamaConfig):
  with nnx.use_eager_sharding(False):
    return nnx.state(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def abstract_params(cfg: LlamaConfig) -> Params:
  """ShapeDtypeStructs of every parameter (no allocation)."""
  return nnx.to_pure_dict(_abstract_state(cfg))


def param_axes(cfg: LlamaConfig) -> Params:
  """The logical axis names of every parameter, as tuples, in the params layout."""
  specs = nnx.to_pure_dict(nnx.get_partition_spec(_abstract_state(cfg)))
  return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def init_params(cfg: LlamaConfig, key: jax.Array, shardings=None) -> Params:
  """Random parameters, created directly in their shardings when given (pytree of NamedSharding)."""

  def make(k):
    with nnx.use_eager_sharding(False):
      return Llama(cfg, rngs=nnx.Rngs(params=k)).params()

  return jax.jit(make, out_shardings=shardings)(key)


# ------------------------------------------------------------------ forward
def _remat(fn, cfg: LlamaConfig):
  if cfg.remat == "none":
    return fn
  policy = (
      jax.checkpoint_policies.nothing_saveable
      if cfg.remat == "full"
      else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  )
  return jax.checkpoint(fn, policy=policy, prevent_cse=False)


_BITS = {jnp.dtype(jnp.bfloat16): jnp.uint16, jnp.dtype(jnp.float16): jnp.int16}


def _residuals_as_bits(fn):
  """fn(x, layer) -> (x, ys), differentiated with its 16-bit float residuals stored as
  same-width integers; `layer` may hold weights packed by `_weights_as_bits`.

  lax.scan stacks a layer's residuals into [L, ...] buffers with a dynamic-update-slice
  per layer. XLA:CPU has no bf16 dynamic-update-slice: it converts the whole stacked
  buffer to float32 and back at every layer, O(L^2) memory traffic that took ~40% of a
  bf16 SmolLM2 training step. Integers are updated in place. The bits are the same, so the
  gradients are too. Residuals that are the layer's own weights are saved as the packed
  slices the scan was given, so the scan reads them from its operands instead of stacking
  copies; the layer's input x (a carry, which the scan stacks like any residual) is packed.
  """

  @jax.custom_vjp
  def f(x, layer):
    return fn(x, _unpack(layer))

  def f_fwd(x, layer):
    full = _unpack(layer)
    out, pullback = jax.vjp(fn, x, full)
    # Residuals that are layer inputs: an unpacked weight is saved as its packed slice.
    given = {}
    for p, u in zip(_leaves(layer), _leaves(full)):
      given[id(u)] = (p.bits, p.dtype) if isinstance(p, _Packed) else (u, None)
    leaves, tree = jax.tree.flatten(pullback)
    packed, kinds = [], []
    for r in leaves:
      if id(r) in given:  # not x: the carry is stacked
        r, kind = given[id(r)]
      elif getattr(r, "dtype", None) in _BITS:
        r, kind = jax.lax.bitcast_convert_type(r, _BITS[r.dtype]), r.dtype
      else:
        kind = None
      packed.append(r)
      kinds.append(kind)
    # Which leaves were packed, and from which dtype: static, carried by the residual tree.
    spec = [(p.shape, p.dtype) if isinstance(p, _Packed) else None for p in _leaves(layer)]
    layer_tree = jax.tree.structure(layer, is_leaf=_is_packed)
    static = _Static((tuple(kinds), tuple(spec), layer_tree))
    return out, (jax.tree.unflatten(tree, packed), static)

  def f_bwd(res, ct):
    packed, static = res
    kinds, spec, layer_tree = static.value
    leaves, tree = jax.tree.flatten(packed)
    pullback = jax.tree.unflatten(
        tree,
        [r if k is None else jax.lax.bitcast_convert_type(r, k) for r, k in zip(leaves, kinds)],
    )
    dx, dfull = pullback(ct)
    # The packed weights are integers to autodiff: a float0 zero (their dW is dead code).
    dlayer = [
        g if s is None else _Packed(np.zeros(s[0], jax.dtypes.float0), s[1])
        for g, s in zip(_leaves(dfull), spec)
    ]
    return dx, jax.tree.unflatten(layer_tree, dlayer)

  f.defvjp(f_fwd, f_bwd)
  return f


class _Packed:
  """A 16-bit float array carried as same-width integer bits (`bits`), its dtype static.

  XLA:CPU has no bf16 dynamic-slice either: it converts a scanned bf16 weight stack
  [L, ...] whole to float32 and slices and converts each layer back, at every step. The
  scan slices the integers instead; the layer bitcasts them back (`_unpack`).
  """

  def __init__(self, bits, dtype):
    self.bits, self.dtype = bits, dtype

  @property
  def shape(self):
    return self.bits.shape


jax.tree_util.register_pytree_node(
    _Packed, lambda p: ((p.bits,), p.dtype), lambda dtype, c: _Packed(c[0], dtype)
)


def _is_packed(n) -> bool:
  return isinstance(n, _Packed)


def _leaves(tree):
  return jax.tree.leaves(tree, is_leaf=_is_packed)


def _unpack(tree):
  return jax.tree.map(
      lambda n: jax.lax.bitcast_convert_type(n.bits, n.dtype) if _is_packed(n) else n,
      tree,
      is_leaf=_is_packed,
  )


def take_rows(table, idx):
  """table [V, D] at rows idx [...] -> [..., D]; a `_Packed` table (`scan_ready`'s
  embedding) is gathered as its bits. XLA:CPU gathered a bf16 table, or cast it to its bits,
  by copying the whole table at every call where two gathers read it."""
  if _is_packed(table):
    return jax.lax.bitcast_convert_type(jnp.take(table.bits, idx, axis=0), table.dtype)
  return jnp.take(table, idx, axis=0)


@jax.custom_jvp
def _bits_of(w):
  return jax.lax.bitcast_convert_type(w, _BITS[w.dtype])


@_bits_of.defjvp
def _bits_of_jvp(primals, tangents):
  raise NotImplementedError(
      "gradients with respect to the base weights: a 16-bit model on the CPU scans its "
      "frozen base as integer bits (llama._weights_as_bits); compute in float32 to "
      "differentiate the base"
  )


def _weights_as_bits(layers):
  """Every 16-bit float leaf of the stacked layer weights as a `_Packed` of its bits (leaves
  packed already, by `scan_ready`, stay as they are)."""
  return jax.tree.map(
      lambda w: _Packed(_bits_of(w), w.dtype)
      if not _is_packed(w) and getattr(w, "dtype", None) in _BITS
      else w,
      layers,
      is_leaf=_is_packed,
  )


def scan_ready(params: Params, cfg: LlamaConfig) -> Params:
  """params as the training and scoring functions take them on the CPU, else params itself.
  16-bit layer stacks are packed once for the layer scan: packing inside every call
  materialized a copy of each whole [L, ...] stack per call (10% of a bf16 SmolLM2 scoring
  call); so is the embedding, which its lookups gather (`take_rows`). A tied embedding's lm
  head is stored once in vocabulary slices (`HEAD_T`, `head_slices`): XLA:CPU's dots are
  faster on narrower outputs, and its 16-bit dot had copied [V, D] into the head's layout
  at every call. For the training and scoring functions only: autodiff cannot reach packed
  weights, and the KV-cache path reads plain ones."""
  packs = _stacks_bf16_by_copy(cfg)
  if jax.default_backend() != "cpu" or not (packs or cfg.tie_word_embeddings):
    return params
  ready = dict(params)
  if packs:
    ready["layers"] = jax.jit(_weights_as_bits)(params["layers"])
    ready["embed"] = jax.jit(_weights_as_bits)(params["embed"])
  if cfg.tie_word_embeddings:
    ready[HEAD_T] = jax.jit(head_slices, static_argnums=1)(params["embed"], CPU_HEAD_SLICE)
  return ready


class _Static:
  """A hashable static value in a custom_vjp residual (a pytree node with no leaves)."""

  def __init__(self, value):
    self.value = value


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s.value), lambda v, _: _Static(v))


def _stacks_bf16_by_copy(cfg: LlamaConfig) -> bool:
  """Whether scanned bf16/f16 residuals would be copied whole at every layer (XLA:CPU)."""
  return jnp.dtype(cfg.compute_dtype) in _BITS and jax.default_backend() == "cpu"


_mm = L.einsum_acc


def _base_matmul(x, w):
  """x [..., in] @ w [in, out] in float32 (float32 accumulation); w a float array or an int8
  {'q', 'scale'} (model/quant.py)."""
  if quant.is_quantized(w):
    return quant.int8_matmul(x, w["q"], w["scale"])
  return _mm("...i,io->...o", x, w.astype(x.dtype))


def _base_matmul_t(dy, w):
  """dy [..., out] @ w^T in float32: the base projection's dX."""
  if quant.is_quantized(w):
    return quant.int8_matmul_t(dy, w["q"], w["scale"])
  return _mm("...o,io->...i", dy, w.astype(dy.dtype))


def _dropped(x, keep, dropout):
  """LoRA's input: x, or x / (1 - p) where keep (bool, x's shape) and 0 elsewhere."""
  if keep is None:
    return x
  return jnp.where(keep, x / (1.0 - dropout), 0).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _lora_linear(x, w, a, b, scale: float, dropout: float, keep):
  """x [..., in] @ w [in, out] + scale * dropped(x) @ a [in, r] @ b [r, out], in x's dtype:
  each matmul in x's dtype with float32 accumulation (the rank-r activations rounded to
  x's dtype, as the next matmul takes them), the two terms added in float32 and rounded
  once. w is the frozen base (float, or int8 {'q', 'scale'}); a and b may be float32
  masters, cast to x's dtype here, their gradients in their own dtype. keep: LoRA
  dropout's bool mask of x's shape, or None.

  One function with its own backward so that the output's cotangent reaches every
  backward matmul in x's dtype as it came, and dX (the base's and the branch's, summed in
  float32) is rounded once. As two functions (the base's dense and the branch) joined by
  float32 adds, autodiff carried a float32 copy of each cotangent into both backward
  passes and converted it back to bf16 for each: conversions of the MLP's width, about 3%
  of a bf16 SmolLM2 training step. dA is formed as (dlow^T x)^T: autodiff's contraction
  over the tokens with a skinny [in, r] output is a layout XLA:CPU runs ~4x slower."""
  return _lora_linear_fwd(x, w, a, b, scale, dropout, keep)[0]


def _lora_linear_fwd(x, w, a, b, scale, dropout, keep):
  dt = x.dtype
  low = _mm("...i,ir->...r", _dropped(x, keep, dropout), a.astype(dt)).astype(dt)
  y = _base_matmul(x, w) + scale * _mm("...r,ro->...o", low, b.astype(dt))
  return y.astype(dt), (x, w, a, b, low, keep)


def _lora_linear_bwd(scale, dropout, res, dy):
  x, w, a, b, low, keep = res
  dt = x.dtype
  dy = dy.astype(dt)
  dlow = (scale * _mm("...o,ro->...r", dy, b.astype(dt))).astype(dt)
  # The barrier keeps XLA from folding the transpose into the dot, which would bring back
  # the slow [in, r] layout (f32: 1.4 ms vs 0.25 ms at [4, 128, 1536] r=8) and, in bf16, a
  # dot XLA:CPU's fallback cannot run at all (BF16 x BF16 = F32 unimplemented).
  da = jax.lax.optimization_barrier(_mm("...r,...i->ri", dlow, _dropped(x, keep, dropout))).T
  db = scale * _mm("...r,...o->ro", low, dy)
  dxl = _mm("...r,ir->...i", dlow, a.astype(dt))
  if keep is not None:
    dxl = jnp.where(keep, dxl / (1.0 - dropout), 0.0)
  dx = (_base_matmul_t(dy, w) + dxl).astype(dt)
  # The frozen base is never differentiated in training (XLA drops this dead dot).
  dw = None if quant.is_quantized(w) else _mm("...i,...o->io", x, dy).astype(w.dtype)
  return dx, dw, da.astype(a.dtype), db.astype(b.dtype), None


_lora_linear.defvjp(_lora_linear_fwd, _lora_linear_bwd)


def _project(x, w, lora_ab, scale, drop_key, dropout, dtype):
  """x [B, T, in] @ w [in, out] (+ the LoRA branch, `_lora_linear`) in `dtype` with float32
  accumulation. w is a float array or an int8 {'q', 'scale'} (model/quant.py)."""
  x = x.astype(dtype)
  if lora_ab is None:
    if quant.is_quantized(w):
      return quant.dense_int8(x, w["q"], w["scale"])
    return L.dense(x, w)
  keep = None
  if drop_key is not None and dropout > 0.0:
    keep = jax.random.bernoulli(drop_key, 1.0 - dropout, x.shape)
  return _lora_linear(x, w, lora_ab["a"], lora_ab["b"], float(scale), float(dropout), keep)


def _layer(cfg: LlamaConfig, lora_scale, lora_dropout, x, layer, mask, cos, sin, kv_index):
  """One decoder layer. x [B, T, D]; layer = (weights, lora|None, cache_kv|None, key|None)."""
  p, lp, cache_kv, key = layer
  dtype = cfg.compute_dtype
  b, t, _ = x.shape

  def proj(h, name):
    k = None if key is None else jax.random.fold_in(key, PROJECTIONS.index(name))
    ab = None if lp is None else lp.get(name)
    return _project(h, p[name], ab, lora_scale, k, lora_dropout, dtype)

  h = L.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q = proj(h, "q").reshape(b, t, cfg.num_heads, cfg.dim_head)
  k = proj(h, "k").reshape(b, t, cfg.num_kv_heads, cfg.dim_head)
  v = proj(h, "v").reshape(b, t, cfg.num_kv_heads, cfg.dim_head)
  new_kv, rope = None, (cos, sin)
  if cache_kv is not None:  # the cache holds rotated keys
    q, k = (L.apply_rope(x, cos[:, :, None], sin[:, :, None]) for x in (q, k))
    rope = None
    ck, cv = cache_kv
    ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, kv_index, 0, 0))
    cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, kv_index, 0, 0))
    new_kv = (ck, cv)
    k, v = ck.astype(dtype), cv.astype(dtype)
  # The fused kernel wants T == S; decoding against a KV cache stays on the einsum path.
  impl = cfg.attention if cache_kv is None else "xla"
  attn = L.attention(q, k, v, mask, impl, rope).reshape(b, t, cfg.q_dim)
  x = x + proj(attn, "o")
  h = L.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  x = x + proj(L.swiglu(proj(h, "gate"), proj(h, "up")), "down")
  return with_logical_constraint(x, _RESIDUAL), new_kv


def _decoder(params, tokens, cfg, mask, positions, lora, lora_cfg, dropout_key, cache_kv, kv_index):
  """Embeds tokens [B, T] (or takes input embeddings [B, T, D] as they are: a probe's gradient
  w.r.t. its inputs), scans the layers, returns normed hidden [B, T, D] and new cache."""
  dtype = cfg.compute_dtype
  if jnp.issubdtype(tokens.dtype, jnp.floating):
    x = tokens.astype(dtype)
  else:  # the lookup would inherit the table's fsdp split of D; shard the batch instead
    x = take_rows(params["embed"], tokens).astype(dtype)
  x = with_logical_constraint(x, _RESIDUAL)
  cos, sin = L.rope_tables(positions, cfg)
  scale = 0.0 if lora_cfg is None else lora_cfg.scale
  dropout = 0.0 if lora_cfg is None else lora_cfg.dropout
  keys = None
  if dropout_key is not None and lora is not None and dropout > 0.0:
    keys = jax.random.split(dropout_key, cfg.num_layers)

  def body(x, layer):
    return _layer(cfg, scale, dropout, x, layer, mask, cos, sin, kv_index)

  body = _remat(body, cfg)
  weights = params["layers"]
  if cache_kv is None and _stacks_bf16_by_copy(cfg):
    body, weights = _residuals_as_bits(body), _weights_as_bits(weights)
  x, new_kv = jax.lax.scan(body, x, (weights, lora, cache_kv, keys), unroll=cfg.scan_unroll)
  return L.rms_norm(x, params["final_norm"], cfg.rms_norm_eps), new_kv


# scan_ready's copy of a tied lm head on the CPU, in vocabulary slices: a pair
# (w_t [D, Vc], w [Vc, D]) per slice (`head_slices`).
HEAD_T = "head_slices"
# Vocabulary columns per slice. XLA:CPU's dots slow down as their float32 output widens:
# [256, 576] x [576, 49152] ran at a third of the speed of [576, 8192] (bf16, one core).
CPU_HEAD_SLICE = 8192


def head_slices(embed, width: int = CPU_HEAD_SLICE):
  """A tied embedding [V, D] -> its lm head in equal slices of at most `width` vocabulary
  columns: ((w_t [D, Vc], w [Vc, D]), ...), each slice in both layouts (the forward's dot
  reads w_t, the backward's w; a slice taken inside a call is a copy at every call)."""
  v = embed.shape[0]
  step = -(-v // -(-v // width))
  return tuple((embed[a : a + step].T, embed[a : a + step]) for a in range(0, v, step))


def lm_head(params: Params, cfg: LlamaConfig):
  """The output projection [D, V] (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def head_weights(params: Params, cfg: LlamaConfig):
  """What `head_logits` takes: the [D, V] projection, or for a tied embedding whose slices
  `scan_ready` stored, the pair (those slices, embed [V, D])."""
  if cfg.tie_word_embeddings and HEAD_T in params:
    return (params[HEAD_T], params["embed"])
  return lm_head(params, cfg)


def head_logits(hidden, head):
  """hidden [..., D] (compute dtype) -> float32 logits [..., V] under `head_weights`."""
  if isinstance(head, tuple):
    return jnp.concatenate(slice_logits(hidden, *head), axis=-1)
  return L.dense(hidden, head, jnp.float32)


@jax.custom_vjp
def slice_logits(x, slices, w):
  """x [..., D] -> float32 logits of each vocabulary slice of a tied head, [[..., Vc], ...]
  (x's dtype, float32 accumulation). `slices` are `head_slices(w)`: copies, constants here;
  the head's gradient goes to w [V, D], the parameter (none where `scan_ready` packed it).
  The same values as `L.dense`."""
  return [_mm("...d,dv->...v", x, w_t.astype(x.dtype)) for w_t, _ in slices]


def _slice_logits_fwd(x, slices, w):
  return slice_logits(x, slices, w), (x, slices, w)


def slice_logits_vjp(x, slices, dys):
  """The pullback of `slice_logits` before its roundings: (dx [..., D], dw [V, D]) in
  float32 (the accumulation dtype), each dy rounded to x's dtype as the dots take it."""
  dys = [dy.astype(x.dtype) for dy in dys]
  dx = sum(_mm("...v,vd->...d", dy, w_s.astype(x.dtype)) for dy, (_, w_s) in zip(dys, slices))
  # The head is frozen in training: XLA drops these dead dots.
  dw = jnp.concatenate([_mm("...d,...v->vd", x, dy) for dy in dys], axis=0)
  return dx, dw


def _slice_logits_bwd(res, dys):
  x, slices, w = res
  dx, dw = slice_logits_vjp(x, slices, dys)
  return dx.astype(x.dtype), None, None if _is_packed(w) else dw.astype(w.dtype)


slice_logits.defvjp(_slice_logits_fwd, _slice_logits_bwd)


def logits_from_hidden(params, hidden, cfg: LlamaConfig):
  """hidden [B, T, D] -> float32 logits [B, T, V]."""
  logits = head_logits(hidden.astype(cfg.compute_dtype), head_weights(params, cfg))
  return with_logical_constraint(logits, ("batch", "length", "act_vocab"))


def default_positions(segment_ids):
  """Positions restarting at 0 in each packed segment: [B, T] -> [B, T] int32."""
  t = segment_ids.shape[-1]
  idx = jnp.arange(t, dtype=jnp.int32)[None, :]
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
      axis=1,
  )
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return (idx - start_idx).astype(jnp.int32)


def hidden_states(
    params: Params,
    tokens,
    cfg: LlamaConfig,
    *,
    lora=None,
    lora_cfg=None,
    segment_ids=None,
    positions=None,
    dropout_key=None,
):
  """Final normed hidden states [B, T, D] for tokens [B, T] (training / scoring path), or for
  input embeddings [B, T, D] in their place.

  segment_ids [B, T]: 0 marks padding, equal ids form one packed sequence
  (default: one sequence per row). positions default to restarting per segment.
  """
  if segment_ids is None:
    segment_ids = jnp.ones(tokens.shape[:2], jnp.int32)
  if positions is None:
    positions = default_positions(segment_ids)
  # 'cudnn' takes row lengths (one right-padded sequence a row: data.pack=False), not a mask.
  if cfg.attention == "cudnn":
    mask = L.row_lengths(segment_ids)
  else:
    mask = L.causal_segment_mask(segment_ids)
  hidden, _ = _decoder(
      params, tokens, cfg, mask, positions, lora, lora_cfg, dropout_key, None, None
  )
  return hidden


def forward(params: Params, tokens, cfg: LlamaConfig, **kw):
  """float32 logits [B, T, V]; keyword arguments as in `hidden_states`."""
  return logits_from_hidden(params, hidden_states(params, tokens, cfg, **kw), cfg)


# ------------------------------------------------------------------ KV cache
def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
  """Empty KV cache: k/v [L, B, S, K, Dh], valid [B, S] bool, index () int32 (next slot)."""
  dtype = dtype or cfg.compute_dtype
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.dim_head)
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "valid": jnp.zeros((batch, max_len), bool),
      "index": jnp.zeros((), jnp.int32),
  }


def cache_axes() -> dict:
  return {
      "k": ("layers", "batch", "length", "act_kv_heads", "head_dim"),
      "v": ("layers", "batch", "length", "act_kv_heads", "head_dim"),
      "valid": ("batch", "length"),
      "index": (),
  }


def hidden_with_cache(
    params: Params,
    tokens,
    cfg: LlamaConfig,
    cache: dict,
    *,
    positions,
    token_valid=None,
    lora=None,
    lora_cfg=None,
):
  """Runs tokens [B, T] (or input embeddings [B, T, D]) at cache slots [index, index+T);
  returns (hidden [B, T, D], cache).

  positions [B, T] are the rope positions; token_valid [B, T] marks real tokens
  (False for left padding), which later tokens never attend to. A prefill
  needs logits at its last position only: apply `logits_from_hidden` to that.
  """
  b, t = tokens.shape[:2]
  s = cache["valid"].shape[1]
  idx = cache["index"]
  if token_valid is None:
    token_valid = jnp.ones((b, t), bool)
  valid = jax.lax.dynamic_update_slice(cache["valid"], token_valid, (0, idx))
  slots = jnp.arange(s)[None, None, :]
  qslot = (idx + jnp.arange(t))[None, :, None]
  mask = (valid[:, None, :] & (slots <= qslot)) | (slots == qslot)
  hidden, (k, v) = _decoder(
      params, tokens, cfg, mask, positions, lora, lora_cfg, None, (cache["k"], cache["v"]), idx
  )
  return hidden, {"k": k, "v": v, "valid": valid, "index": idx + t}


def forward_with_cache(params: Params, tokens, cfg: LlamaConfig, cache: dict, **kw):
  """`hidden_with_cache` followed by the lm head: (logits [B, T, V] float32, cache)."""
  hidden, cache = hidden_with_cache(params, tokens, cfg, cache, **kw)
  return logits_from_hidden(params, hidden, cfg), cache
