"""Pure building blocks of a Llama decoder layer: RMSNorm, RoPE, GQA attention, SwiGLU.

Shape letters: B batch, T query length, S key length, D hidden, H query heads,
K kv heads, G = H/K query heads per kv head, Dh head dim, F mlp hidden.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from flock_jax.model.config import LlamaConfig, RopeScaling

# ------------------------------------------------------------------ matmuls
# Every matmul runs in the compute dtype with float32 accumulation
# (`preferred_element_type=float32`): XLA:CPU's fast bf16 path (AMX / AVX-512
# BF16) is taken only when f32 accumulation is asked for (bf16 x bf16 -> bf16
# ran ~5x slower on the machines in docs/speed.md), and accumulating in f32 is
# what bounds the error. In float32 this changes nothing.
F32 = jnp.float32


def acc_dtype(dtype):
  """The accumulation dtype for a compute dtype: float32, or wider (float64 under x64)."""
  return jnp.promote_types(dtype, F32)


def einsum_acc(spec, u, v):
  """jnp.einsum accumulating (and returning) in acc_dtype of the operands' dtype."""
  return jnp.einsum(spec, u, v, preferred_element_type=acc_dtype(jnp.result_type(u, v)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x, w, out_dtype=None):
  """x [..., in] @ w [in, out] -> [..., out] in out_dtype (default x.dtype), f32 accumulation.

  Written with its own backward so that the backward matmuls also run as
  x.dtype x x.dtype -> f32 (autodiff would transpose the f32-output dot into a
  mixed f32 x bf16 dot, the slow path). dw is only formed when w is
  differentiated (the frozen base never is: XLA drops the dead dot).
  """
  y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=F32)
  return y.astype(out_dtype or x.dtype)


def _dense_fwd(x, w, out_dtype):
  return dense(x, w, out_dtype), (x, w)


def _dense_bwd(out_dtype, res, dy):
  del out_dtype
  x, w = res
  dy = dy.astype(x.dtype)
  dx = jnp.einsum("...o,io->...i", dy, w.astype(x.dtype), preferred_element_type=F32)
  dw = jnp.einsum("...i,...o->io", x, dy, preferred_element_type=F32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, weight, eps: float):
  """x [..., D] normalised in float32 by its root mean square, times weight [D].

  Its backward keeps x as it came (bf16 in a bf16 model) and the float32 1/rms [..., 1]
  and upcasts x again; autodiff kept x in float32, twice (two more [B, T, D] float32
  stacks per norm in a scanned layer). The gradient is the standard one:
  dx = r (dn - n mean(dn n)), n = x r, dn = dy w."""
  y, _ = _rms_norm_fwd(x, weight, eps)
  return y


def _rms_norm_fwd(x, weight, eps):
  x32 = x.astype(F32)
  r = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (weight.astype(F32) * (x32 * r)).astype(x.dtype), (x, weight, r)


def _rms_norm_bwd(eps, res, dy):
  del eps
  x, weight, r = res
  n = x.astype(F32) * r
  dy = dy.astype(F32)
  dn = dy * weight.astype(F32)
  dx = r * (dn - n * jnp.mean(dn * n, axis=-1, keepdims=True))
  dw = jnp.sum((dy * n).reshape(-1, n.shape[-1]), axis=0)
  return dx.astype(x.dtype), dw.astype(weight.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def rope_inv_freq(dim_head: int, theta: float, scaling: RopeScaling) -> jax.Array:
  """Inverse frequencies [Dh/2], with Llama-3 (3.1) or linear scaling applied."""
  inv = 1.0 / (theta ** (jnp.arange(0, dim_head, 2, dtype=jnp.float32) / dim_head))
  if scaling.kind == "linear":
    return inv / scaling.factor
  if scaling.kind == "llama3":
    # Meta's Llama 3.1 formula (also transformers' _compute_llama3_parameters).
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)
  return inv


def rope_tables(positions, cfg: LlamaConfig):
  """cos, sin [B, T, Dh] for integer positions [B, T] (HF's rotate-half layout)."""
  inv = rope_inv_freq(cfg.dim_head, cfg.rope_theta, cfg.rope_scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [B, T, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


@jax.custom_vjp
def apply_rope(x, cos, sin):
  """x [..., Dh] rotated by cos/sin (float32, HF's rotate-half layout, broadcastable to x:
  [B, T, 1, Dh] for x [B, T, N, Dh]), in x's dtype: [x1 c1 - x2 s1, x2 c2 + x1 s2] for the
  halves x1, x2 of Dh.

  Written on the halves stacked on their own axis, not as x c + rotate_half(x) s: XLA:CPU
  emits the rotate-half's concatenation along Dh as a per-element select. Its backward is
  the transposed rotation computed once in float32 (autodiff's transpose of the rotate-half
  was a pad/select fusion, 7% of a bf16 SmolLM2 training step)."""
  return _rotate(x, cos, sin, transpose=False)


def _rotate(x, cos, sin, transpose: bool):
  """[x1 c1 - x2 s1, x2 c2 + x1 s2], or its transpose [x1 c1 + x2 s2, x2 c2 - x1 s1]."""
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
  if transpose:
    halves = (x1 * c1 + x2 * s2, x2 * c2 - x1 * s1)
  else:
    halves = (x1 * c1 - x2 * s1, x2 * c2 + x1 * s2)
  return jnp.stack(halves, axis=-2).reshape(x.shape).astype(x.dtype)


def _apply_rope_fwd(x, cos, sin):
  return apply_rope(x, cos, sin), (cos, sin)


def _apply_rope_bwd(res, g):
  cos, sin = res
  # d/dx of x c + R(x) s is c g + R^T(s g); cos and sin are tables of positions (no grad).
  return _rotate(g, cos, sin, transpose=True), jnp.zeros_like(cos), jnp.zeros_like(sin)


apply_rope.defvjp(_apply_rope_fwd, _apply_rope_bwd)


def attention(q, k, v, mask, impl: str = "xla", rope=None):
  """Grouped-query attention.

  q [B, T, H, Dh], k/v [B, S, K, Dh]. Returns [B, T, H, Dh]. rope: (cos, sin) [B, T, Dh]
  to rotate q and k by first (T == S), or None if they already are.
  impl 'xla': mask bool [B, T, S] (True = attend); scores and softmax in float32, the
  [T, S] square materialized.
  impl 'cudnn': mask is the row lengths int32 [B] of right-padded rows that hold one
  sequence each (T == S); cuDNN's fused flash attention (GPU, bf16/fp16), causal, padded
  keys masked, the blocks above the diagonal skipped. Each real token sees what it sees
  under 'xla'; padded query rows (loss-masked) differ. No arbitrary mask: cuDNN takes one
  as a full [B, H, T, S] bias, and its batching rule (vmapped clients) needs that shape.
  """
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError(
          f"attention='cudnn' runs on a GPU only; this program's backend is "
          f"{jax.default_backend()!r} (use attention='xla')"
      )
    if rope is not None:
      q, k = (apply_rope(x, rope[0][:, :, None], rope[1][:, :, None]) for x in (q, k))
    return padded_causal_attention(q, k, v, mask, implementation="cudnn")
  b, t, h, dh = q.shape
  kh = k.shape[2]
  # Heads-major operands [B, K, G, T, Dh] / [B, K, S, Dh], moved by plain transposes and
  # rotated there. Contracting [B, T, K, G, Dh] directly, XLA:CPU chose [Dh, G*T] operand
  # layouts; with RoPE applied before the transposes it fused RoPE, the projection's LoRA
  # add and the layout changes into one slow loop fusion (the two: ~25% of a bf16 scoring
  # call). The values are the same either way.
  q = q.reshape(b, t, kh, h // kh, dh).transpose(0, 2, 3, 1, 4)
  k, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if rope is not None:
    cos, sin = rope
    q = apply_rope(q, cos[:, None, None], sin[:, None, None])
    k = apply_rope(k, cos[:, None], sin[:, None])
  out = heads_major_attention(q, k, vh, mask[:, None, None, :, :])
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


@jax.custom_vjp
def heads_major_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(Dh), masked) v in v's dtype: q [B, K, G, T, Dh], k/v [B, K, S, Dh],
  mask bool [B, 1, 1, T, S]; scores and softmax in float32, float32 accumulation.

  Its backward runs its four matmuls as the forward runs its two, in the compute dtype with
  float32 accumulation: the softmax's gradient is rounded to that dtype before dq and dk, as
  flash attention does. Autodiff transposed each float32-output einsum into a float32 x
  bf16 matmul, which XLA:CPU runs in float32 (one on its slow fallback path). In float32
  the two are the same computation."""
  return _heads_major_attention_fwd(q, k, v, mask)[0]


def _heads_major_attention_fwd(q, k, v, mask):
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=F32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  p = masked_softmax(scores, mask, v.dtype)
  out = jnp.einsum("bkgts,bksd->bkgtd", p, v, preferred_element_type=F32).astype(v.dtype)
  return out, (q, k, v, p, mask)


def _heads_major_attention_bwd(res, dout):
  q, k, v, p, mask = res
  dout = dout.astype(v.dtype)
  dp = jnp.einsum("bkgtd,bksd->bkgts", dout, v, preferred_element_type=F32)
  dv = jnp.einsum("bkgts,bkgtd->bksd", p, dout, preferred_element_type=F32)
  ds = _masked_softmax_grad(p, mask, dp)
  ds = (ds / jnp.sqrt(jnp.float32(q.shape[-1]))).astype(q.dtype)
  dq = jnp.einsum("bkgts,bksd->bkgtd", ds, k, preferred_element_type=F32)
  dk = jnp.einsum("bkgts,bkgtd->bksd", ds, q, preferred_element_type=F32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


heads_major_attention.defvjp(_heads_major_attention_fwd, _heads_major_attention_bwd)


def masked_softmax(scores, mask, dtype):
  """Softmax over the last axis of float32 scores where `mask` (bool, broadcastable) is True,
  in `dtype` (the PV matmul's input); masked entries get finfo.min, as HF's eager attention.
  Differentiated by `heads_major_attention`'s backward (`_masked_softmax_grad`), which keeps
  only these `dtype` probabilities and the unbroadcast mask."""
  s = jnp.where(mask, scores, jnp.finfo(F32).min)
  return jax.nn.softmax(s, axis=-1).astype(dtype)


def _masked_softmax_grad(p, mask, dp):
  """d scores from the probabilities p and their cotangent dp: autodiff's formula,
  p * (dp - sum(dp * p)), in float32, zero where masked."""
  p, dp = p.astype(F32), dp.astype(F32)
  ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
  return jnp.where(mask, ds, 0.0)


def padded_causal_attention(q, k, v, lengths, implementation: str = "cudnn"):
  """Causal attention over right-padded rows: q [B, T, H, Dh], k/v [B, T, K, Dh], lengths
  int32 [B] (real tokens a row) -> [B, T, H, Dh]. jax.nn.dot_product_attention's arguments
  for the fused kernel; implementation='xla' computes the same function on any backend."""
  if q.shape[1] != k.shape[1] or lengths.shape != q.shape[:1]:
    raise ValueError(
        f"attention='cudnn' needs T == S and row lengths [B]; got q {q.shape}, k {k.shape},"
        f" lengths {lengths.shape}"
    )
  return jax.nn.dot_product_attention(
      q,
      k,
      v,
      is_causal=True,
      query_seq_lengths=lengths,
      key_value_seq_lengths=lengths,
      implementation=implementation,
  )


@jax.custom_vjp
def swiglu(gate, up):
  """silu(gate) * up [..., F] in gate's dtype, computed in float32 and rounded once.

  In bf16, jax.nn.silu rounds to bf16 after each of its five operations, which XLA:CPU
  emits as a conversion pair around each (a third of a bf16 scoring call's MLP time). The
  backward keeps gate and up as they came (bf16 in a bf16 model; autodiff of the float32
  form kept float32 copies, whole [L, ...] scan stacks of them) and recomputes the
  sigmoid: dgate = dh up s (1 + gate (1 - s)), dup = dh gate s, s = sigmoid(gate)."""
  ct = jnp.promote_types(gate.dtype, F32)  # at least float32
  return (jax.nn.silu(gate.astype(ct)) * up.astype(ct)).astype(gate.dtype)


def _swiglu_fwd(gate, up):
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, dh):
  gate, up = res
  ct = jnp.promote_types(gate.dtype, F32)
  g, u, d = gate.astype(ct), up.astype(ct), dh.astype(ct)
  s = jax.nn.sigmoid(g)
  return (d * u * (s * (1.0 + g * (1.0 - s)))).astype(gate.dtype), (d * (g * s)).astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def row_lengths(segment_ids):
  """[B, T] segment ids of right-padded one-sequence rows -> int32 [B] real-token counts."""
  return jnp.sum(segment_ids != 0, axis=-1).astype(jnp.int32)


def causal_segment_mask(segment_ids):
  """[B, T] segment ids (0 = padding) -> bool [B, T, T]: causal, same segment, not padding."""
  t = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  valid = (segment_ids != 0)[:, None, :]
  # Padding queries attend to themselves only, so softmax never sees an empty row.
  eye = jnp.eye(t, dtype=bool)[None]
  return (causal[None] & same & valid) | eye
