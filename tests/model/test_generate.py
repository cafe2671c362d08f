"""KV-cached generation: equal to a naive loop of full forwards, to Hugging Face, and to itself
under LoRA merging, client batching, EOS stopping and sampling limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flock_jax.checkpoint.hf_names import params_from_state_dict
from flock_jax.model import LlamaConfig, forward, forward_with_cache, init_cache, init_params
from flock_jax.model import generate as G
from flock_jax.model.lora import LoraConfig, init_client_loras, merge
from flock_jax.model.sampling import Sampling, candidates, sample


def tiny(**kw) -> LlamaConfig:
  # initializer_range 0.3: logits spread widely enough that greedy never meets a near-tie
  # between the cached and the full-forward numerics.
  base = dict(
      vocab_size=97,
      hidden_size=64,
      intermediate_size=96,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      max_position_embeddings=256,
      bos_token_id=None,
      eos_token_id=None,
      initializer_range=0.3,
  )
  base.update(kw)
  return LlamaConfig(**base)


CFG = tiny()
LENGTHS = (3, 9, 1, 6)  # left-padded to 16: rows with very different padding


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return G.left_pad([list(rng.integers(0, CFG.vocab_size, n)) for n in LENGTHS])


def naive_logits(params, cfg, tokens, valid, new_tokens, lora=None, lora_cfg=None):
  """Logits [B, N, V] that predicted each new token, from full forwards of prompt + answer."""
  seq = np.concatenate([tokens, new_tokens], axis=1)
  seg = np.concatenate([valid, np.ones(new_tokens.shape, bool)], axis=1).astype(np.int32)
  lg = forward(
      params, jnp.asarray(seq), cfg, segment_ids=jnp.asarray(seg), lora=lora, lora_cfg=lora_cfg
  )
  p = tokens.shape[1]
  return np.asarray(lg[:, p - 1 : -1])


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize(
    "cfg",
    [CFG, tiny(num_kv_heads=1, tie_word_embeddings=True, head_dim=24, num_layers=3)],
    ids=["untied_kv2", "tied_kv1_headdim24"],
)
def test_greedy_equals_naive_full_forward_loop(cfg, prompts):
  params = init_params(cfg, jax.random.key(1))
  tokens, valid = prompts
  out = G.generate(params, cfg, tokens, valid, max_new_tokens=8)
  ref = G.naive_greedy(params, cfg, tokens, valid, 8)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(out.lengths, 8)
  assert not np.asarray(out.finished).any() and int(out.steps) == 8
  # logprobs are the model's log-softmax at each chosen token
  lp = jax.nn.log_softmax(naive_logits(params, cfg, tokens, valid, ref), axis=-1)
  np.testing.assert_allclose(
      out.logprobs, np.take_along_axis(lp, ref[..., None], -1)[..., 0], atol=1e-4
  )


def test_chunked_cache_calls_equal_one_full_forward(params):
  """Prefill in two chunks (slots 0..4 with left padding, then 5..7), then one step at slot 8:
  every chunk's logits equal the full forward's, and k/v [L, B, S, K, Dh] fill slots 0..8 only."""
  rng = np.random.default_rng(2)
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 9)), jnp.int32)
  valid = jnp.asarray(np.arange(9)[None, :] >= np.array([[0], [2]]))  # row 1: 2 pad slots
  positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  full = np.asarray(
      forward(params, tokens, CFG, segment_ids=valid.astype(jnp.int32), positions=positions)
  )
  cache = init_cache(CFG, 2, 12)
  assert cache["k"].shape == (CFG.num_layers, 2, 12, CFG.num_kv_heads, CFG.dim_head)
  got = []
  for lo, hi in ((0, 5), (5, 8), (8, 9)):
    logits, cache = forward_with_cache(
        params,
        tokens[:, lo:hi],
        CFG,
        cache,
        positions=positions[:, lo:hi],
        token_valid=valid[:, lo:hi],
    )
    got.append(np.asarray(logits))
  assert int(cache["index"]) == 9
  real = np.asarray(valid)
  np.testing.assert_allclose(np.concatenate(got, axis=1)[real], full[real], atol=1e-4)
  k = np.asarray(cache["k"])
  assert (k[:, :, 9:] == 0).all() and (np.abs(k[:, :, :9]).sum(-1) > 0).all()


def test_matches_hugging_face_generate():
  from tests.model.hf_reference import random_hf_model, state_dict_numpy
  import torch

  cfg = CFG  # same shapes as the greedy test: its compiled generate is reused
  model = random_hf_model(cfg, seed=4)
  params = params_from_state_dict(state_dict_numpy(model), cfg)
  rng = np.random.default_rng(5)
  seqs = [list(rng.integers(0, cfg.vocab_size, n)) for n in LENGTHS]
  tokens, valid = G.left_pad(seqs)
  ours = np.asarray(G.generate(params, cfg, tokens, valid, max_new_tokens=8).tokens)
  for i, s in enumerate(seqs):  # HF unpadded, one row at a time
    with torch.no_grad():
      ref = model.generate(
          torch.tensor([s]),
          attention_mask=torch.ones(1, len(s), dtype=torch.long),
          do_sample=False,
          max_new_tokens=8,
          min_new_tokens=8,
          pad_token_id=0,
          eos_token_id=None,
      )
    np.testing.assert_array_equal(ours[i], ref[0, len(s) :].numpy(), err_msg=f"row {i}")


# ------------------------------------------------------------------ EOS
def test_eos_stops_each_row_and_pads_the_rest(params, prompts):
  tokens, valid = prompts
  free = np.asarray(G.generate(params, CFG, tokens, valid, max_new_tokens=8).tokens)
  eos = int(free[0, 4])  # row 0 must stop at step 4 (or earlier if the token repeats)
  out = G.generate(params, CFG, tokens, valid, max_new_tokens=8, eos_ids=(eos,), pad_id=-1)
  got = np.asarray(out.tokens)
  for i in range(len(LENGTHS)):
    hits = np.flatnonzero(free[i] == eos)
    n = hits[0] + 1 if hits.size else 8
    np.testing.assert_array_equal(got[i, :n], free[i, :n])
    assert (got[i, n:] == -1).all(), f"row {i} not padded after its EOS: {got[i]}"
    assert int(out.lengths[i]) == n and bool(out.finished[i]) == bool(hits.size)
    assert (np.asarray(out.logprobs)[i, n:] == 0).all()
  assert bool(out.finished[0]) and int(out.lengths[0]) <= 5


def bigram_params(cfg: LlamaConfig, successor: dict[int, int]):
  """A rigged model whose next token depends on the current token only: t -> successor[t].

  Attention and MLP outputs are zeroed, so the residual stream is the token's
  embedding: listed tokens get one-hot embeddings in their own dimension (at
  most hidden_size of them) that the untied head maps to their successor;
  unlisted tokens embed to 0 and are followed by token 0.
  """
  v, d = cfg.vocab_size, cfg.hidden_size
  listed = sorted(successor)
  assert len(listed) <= d and not cfg.tie_word_embeddings
  p = init_params(cfg, jax.random.key(0))
  layers = dict(
      p["layers"], o=jnp.zeros_like(p["layers"]["o"]), down=jnp.zeros_like(p["layers"]["down"])
  )
  dims = jnp.arange(len(listed))
  embed = jnp.zeros((v, d)).at[jnp.asarray(listed), dims].set(3.0)
  head = jnp.zeros((d, v)).at[dims, jnp.asarray([successor[t] for t in listed])].set(1.0)
  return dict(p, layers=layers, embed=embed, lm_head=head)


def test_eos_via_rigged_model_stops_rows_at_known_steps():
  chains = list(range(36, 40)) + list(range(60, 68))
  params = bigram_params(CFG, {t: t + 1 for t in chains})
  eos = 40
  tokens, valid = G.left_pad([[5, 37], [39], [60, 61, 2, 60], [36]])
  out = G.generate(params, CFG, tokens, valid, max_new_tokens=8, eos_ids=(eos,), pad_id=-1)
  np.testing.assert_array_equal(
      out.tokens,
      [
          [38, 39, 40, -1, -1, -1, -1, -1],
          [40, -1, -1, -1, -1, -1, -1, -1],
          [61, 62, 63, 64, 65, 66, 67, 68],
          [37, 38, 39, 40, -1, -1, -1, -1],
      ],
  )
  np.testing.assert_array_equal(out.lengths, [3, 1, 8, 4])
  np.testing.assert_array_equal(out.finished, [True, True, False, True])
  assert int(out.steps) == 8
  # once every row has stopped the loop exits: 4 steps, not 8 (eos and pad are data: no recompile)
  out = G.generate(params, CFG, tokens, valid, max_new_tokens=8, eos_ids=(eos, 64))
  assert int(out.steps) == 4 and np.asarray(out.finished).all()
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 4:], 0)
  np.testing.assert_array_equal(out.lengths, [3, 1, 4, 4])


# ------------------------------------------------------------------ sampling
def test_near_zero_temperature_and_top_k_1_equal_greedy(params, prompts):
  tokens, valid = prompts
  greedy = np.asarray(G.generate(params, CFG, tokens, valid, max_new_tokens=8).tokens)
  key = jax.random.key(3)
  # top_k=3 as in the next test: temperature is data, so all of these share one compile
  cold = G.generate(
      params, CFG, tokens, valid, max_new_tokens=8, key=key, temperature=1e-5, top_k=3
  )
  top1 = G.generate(params, CFG, tokens, valid, max_new_tokens=8, key=key, temperature=5.0, top_k=1)
  np.testing.assert_array_equal(cold.tokens, greedy)
  np.testing.assert_array_equal(top1.tokens, greedy)


def test_sampled_tokens_lie_in_top_k_and_keys_reproduce(params, prompts):
  tokens, valid = prompts
  kw = dict(max_new_tokens=8, temperature=3.0, top_k=3)
  a = np.asarray(G.generate(params, CFG, tokens, valid, key=jax.random.key(7), **kw).tokens)
  b = np.asarray(G.generate(params, CFG, tokens, valid, key=jax.random.key(7), **kw).tokens)
  c = np.asarray(G.generate(params, CFG, tokens, valid, key=jax.random.key(8), **kw).tokens)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any(), "different keys gave identical samples"
  logits = naive_logits(params, CFG, tokens, valid, a)
  top3 = np.argsort(-logits, axis=-1)[..., :3]
  assert (top3 == a[..., None]).any(-1).all(), "a sampled token is outside the top-k set"
  assert (a != top3[..., 0]).any(), "temperature 3 never left the argmax: not sampling"


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
  vals, ids = candidates(logits, Sampling(1.0, None, 0.7))
  kept = [sorted(np.asarray(ids[r])[np.isfinite(np.asarray(vals[r]))].tolist()) for r in range(2)]
  assert kept == [[0, 1], [2, 3]]  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops
  vals, _ = candidates(logits, Sampling(1.0, None, 0.4))
  assert np.isfinite(np.asarray(vals)).sum(-1).tolist() == [1, 1]  # the top token always kept


def test_sample_frequencies_follow_the_filtered_distribution():
  probs = np.array([0.4, 0.3, 0.2, 0.1])
  logits = jnp.log(jnp.asarray(probs))[None]
  keys = jax.random.split(jax.random.key(0), 20000)
  draw = jax.jit(jax.vmap(lambda k: sample(logits, k, Sampling(1.0, 3, None))[0]))
  freq = np.bincount(np.asarray(draw(keys)), minlength=4) / 20000
  np.testing.assert_allclose(freq, [4 / 9, 3 / 9, 2 / 9, 0.0], atol=0.015)
  draw_t = jax.jit(jax.vmap(lambda k: sample(logits, k, Sampling(0.5, None, None))[0]))
  freq = np.bincount(np.asarray(draw_t(keys)), minlength=4) / 20000
  sharp = probs**2 / (probs**2).sum()
  np.testing.assert_allclose(freq, sharp, atol=0.015)


# ------------------------------------------------------------------ LoRA and clients
LCFG = LoraConfig(rank=4, alpha=8.0)


@jax.jit
def _noise_loras(key):
  """3 clients' adapters with random A and B (B = 0 would leave the model unchanged)."""
  leaves, tree = jax.tree.flatten(init_client_loras(CFG, LCFG, key, 3))
  return jax.tree.unflatten(
      tree,
      [0.3 * jax.random.normal(jax.random.fold_in(key, i), x.shape) for i, x in enumerate(leaves)],
  )


def _random_loras(key, clients):
  assert clients == 3
  return _noise_loras(key), LCFG


def test_lora_generation_equals_merged_weights(params, prompts):
  tokens, valid = prompts
  loras, lcfg = _random_loras(jax.random.key(11), 3)
  lora = jax.tree.map(lambda x: x[0], loras)
  ours = G.generate(params, CFG, tokens, valid, max_new_tokens=8, lora=lora, lora_cfg=lcfg)
  merged = G.generate(merge(params, lora, lcfg), CFG, tokens, valid, max_new_tokens=8)
  base = G.generate(params, CFG, tokens, valid, max_new_tokens=8)
  np.testing.assert_array_equal(ours.tokens, merged.tokens)
  assert (np.asarray(ours.tokens) != np.asarray(base.tokens)).any(), "adapter had no effect"


@pytest.mark.parametrize("per_client_prompts", [False, True], ids=["shared", "per_client"])
def test_generate_clients_equals_per_client_generate(params, prompts, per_client_prompts):
  tokens, valid = prompts
  loras, lcfg = _random_loras(jax.random.key(12), 3)
  if per_client_prompts:  # every client its own random prompts, same padding
    rng = np.random.default_rng(9)
    tokens = np.stack([rng.integers(0, CFG.vocab_size, tokens.shape) for _ in range(3)])
    valid = np.broadcast_to(valid, tokens.shape)
  key = jax.random.key(5)
  kw = dict(max_new_tokens=8, temperature=1.5, top_p=0.9, eos_ids=(3,))
  out = G.generate_clients(params, CFG, tokens, valid, lora=loras, lora_cfg=lcfg, key=key, **kw)
  assert out.tokens.shape == (3, len(LENGTHS), 8)
  for c in range(3):
    lo = jax.tree.map(lambda x: x[c], loras)
    t, v = (tokens[c], valid[c]) if per_client_prompts else (tokens, valid)
    one = G.generate(
        params, CFG, t, v, lora=lo, lora_cfg=lcfg, key=jax.random.fold_in(key, c), **kw
    )
    np.testing.assert_array_equal(out.tokens[c], one.tokens, err_msg=f"client {c}")
    np.testing.assert_array_equal(out.lengths[c], one.lengths, err_msg=f"client {c}")
  assert (np.asarray(out.tokens[0]) != np.asarray(out.tokens[1])).any()


# ------------------------------------------------------------------ chat
def test_chat_generate_with_byte_tokenizer():
  from flock_jax.data.tokenizer import byte_tokenizer

  tok = byte_tokenizer()
  cfg = tiny(vocab_size=len(tok))
  params = init_params(cfg, jax.random.key(6))
  im_end = tok.convert_tokens_to_ids("<|im_end|>")
  prompts = ["What is 2+2?", "Say hi", "Why?", "Name a color."]  # one length bucket (64)
  ids = G.chat_prompt_ids(tok, prompts, system="Be brief.")
  assert tok.decode(ids[1]) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n"
      "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
  )
  assert im_end in G.stop_ids(tok, cfg)
  answers = G.chat_generate(
      params, cfg, tok, prompts, system="Be brief.", max_new_tokens=12, batch_size=2
  )
  assert len(answers) == 4 and any(answers)
  # reference: one batch, padded only to the longest prompt (no buckets, no batch split)
  stops = G.stop_ids(tok, cfg)
  tokens, valid = G.left_pad(ids, length=max(map(len, ids)))
  ref = G.generate(params, cfg, tokens, valid, max_new_tokens=12, eos_ids=stops)
  assert answers == [tok.decode(r, skip_special_tokens=True) for r in G.trim(ref.tokens, stops)]
  # The end-of-turn token stops an answer: a rigged model answers "abc" then <|im_end|>.
  rigged = bigram_params(
      cfg, {ord("\n"): ord("a"), ord("a"): ord("b"), ord("b"): ord("c"), ord("c"): im_end}
  )
  assert (
      G.chat_generate(
          rigged, cfg, tok, prompts, system="Be brief.", max_new_tokens=12, batch_size=2
      )
      == ["abc"] * 4
  )


def test_bucketing_and_left_pad():
  assert [G.bucket_length(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
  tokens, valid = G.left_pad([[5, 6], [7]], rows=3, pad_id=9)
  np.testing.assert_array_equal(tokens[:, -2:], [[5, 6], [9, 7], [9, 9]])
  assert valid.sum(1).tolist() == [2, 1, 1] and tokens.shape == (3, 16)
  assert G.trim(np.array([[4, 2, 5], [4, 4, 4]]), (2,)) == [[4], [4, 4, 4]]


# ------------------------------------------------------------------ bad input
def test_bad_input_errors(params):
  right_padded = np.array([[True, True, False]])
  with pytest.raises(ValueError, match="LEFT-padded"):
    G.generate(params, CFG, np.zeros((1, 3), np.int32), right_padded, max_new_tokens=2)
  with pytest.raises(ValueError, match="explicit PRNG key"):
    G.generate(
        params,
        CFG,
        np.zeros((1, 3), np.int32),
        np.ones((1, 3), bool),
        max_new_tokens=2,
        temperature=1.0,
    )
  with pytest.raises(ValueError, match="token ids must be in"):
    G.generate(params, CFG, np.full((1, 3), 500, np.int32), np.ones((1, 3), bool), max_new_tokens=2)
  loras, lcfg = _random_loras(jax.random.key(12), 3)
  with pytest.raises(ValueError, match="without lora_cfg"):
    G.generate(
        params,
        CFG,
        np.zeros((1, 3), np.int32),
        np.ones((1, 3), bool),
        max_new_tokens=2,
        lora=jax.tree.map(lambda x: x[0], loras),
    )
  with pytest.raises(ValueError, match=r"lora leaf .* has shape"):
    G.generate(
        params,
        CFG,
        np.zeros((1, 3), np.int32),
        np.ones((1, 3), bool),
        max_new_tokens=2,
        lora=loras,
        lora_cfg=lcfg,
    )
  with pytest.raises(ValueError, match="top_p"):
    G.generate(
        params,
        CFG,
        np.zeros((1, 3), np.int32),
        np.ones((1, 3), bool),
        max_new_tokens=2,
        temperature=1.0,
        top_p=1.5,
        key=jax.random.key(0),
    )


# ------------------------------------------------------------------ the real model
@pytest.mark.slow
def test_smollm2_greedy_chat_matches_transformers_gguf():
  """SmolLM2-135M-Instruct: our batched greedy answers are transformers' own, token for token."""
  import torch
  from transformers import AutoModelForCausalLM
  from flock_jax.checkpoint.smollm2 import load_smollm2, smollm2_gguf_path

  cfg, params, tok = load_smollm2()
  path = smollm2_gguf_path()
  model = AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32
  ).eval()
  prompts = [
      "What is the capital of France?",
      "Name three colors.",
      "Write one sentence about the sea.",
  ]
  stops = G.stop_ids(tok, cfg)
  ids = G.chat_prompt_ids(tok, prompts)
  out = G.generate(
      params,
      cfg,
      *G.left_pad(ids, pad_id=tok.pad_token_id),
      max_new_tokens=20,
      eos_ids=stops,
      pad_id=tok.pad_token_id,
  )
  for i, s in enumerate(ids):
    with torch.no_grad():
      ref = model.generate(
          torch.tensor([s]),
          attention_mask=torch.ones(1, len(s), dtype=torch.long),
          do_sample=False,
          max_new_tokens=20,
          eos_token_id=list(stops),
          pad_token_id=tok.pad_token_id,
      )
    ref = ref[0, len(s) :].numpy()
    n = int(out.lengths[i])
    np.testing.assert_array_equal(np.asarray(out.tokens)[i, :n], ref, err_msg=prompts[i])
  answers = G.chat_generate(params, cfg, tok, prompts, max_new_tokens=20)
  assert "Paris" in answers[0], answers
