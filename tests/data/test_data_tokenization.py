"""Byte tokenizer, chat template, response-only loss mask, padding, packing."""

import numpy as np
import pytest

from flock_jax.data.example import Example
from flock_jax.data.generated import generate_finance
from flock_jax.data.tokenization import encode_examples, encode_prompt, tokenize_examples
from flock_jax.data.tokenizer import BYTE_VOCAB_SIZE, CHATML_TEMPLATE, byte_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok():
  return byte_tokenizer()


def _examples(n=12, seed=0):
  return generate_finance(n, seed) + [
      Example("misc", "héllo wörld 你好?", "Ünïcode réponse 🙂", uid="misc/0")
  ]


def test_byte_tokenizer_vocab_and_roundtrip(tok):
  assert len(tok) == BYTE_VOCAB_SIZE == 260
  assert (tok.pad_token_id, tok.eos_token, tok.bos_token) == (259, "<|im_end|>", "<|im_start|>")
  text = "Café 你好 🙂 \t\n end"
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
  chat = tok.apply_chat_template(
      [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
  )
  assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_save_and_load_tokenizer(tok, tmp_path):
  tok.save_pretrained(tmp_path / "t")
  for src in (tmp_path / "t", tmp_path / "t" / "tokenizer.json", "byte"):
    t2 = load_tokenizer(src)
    assert t2("a<|im_end|>b", add_special_tokens=False)["input_ids"] == [97, 258, 98]
  assert load_tokenizer(tmp_path / "t").chat_template == CHATML_TEMPLATE
  with pytest.raises(FileNotFoundError, match="Hub names are not"):
    load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_mask_covers_exactly_response_and_end_token(tok, system):
  exs = _examples()
  arr = tokenize_examples(exs, tok, 512, system=system)
  assert arr["tokens"].dtype == np.int32 and arr["loss_mask"].dtype == np.float32
  assert (
      arr["tokens"].shape == arr["loss_mask"].shape == arr["segment_ids"].shape == (len(exs), 512)
  )
  for r, ex in enumerate(exs):
    m = arr["loss_mask"][r] > 0
    assert tok.decode(arr["tokens"][r][m]) == ex.response + "<|im_end|>"
    # Everything before the mask is the generation prompt, exactly.
    start = int(np.argmax(m))
    assert arr["tokens"][r][:start].tolist() == encode_prompt(tok, ex.prompt, system=system)
    n = int((arr["segment_ids"][r] > 0).sum())
    assert (arr["tokens"][r][n:] == tok.pad_token_id).all() and not m[n:].any()
    assert arr["positions"][r][:n].tolist() == list(range(n))
    assert tok.decode(arr["tokens"][r][n - 1 : n]) == "\n"  # closing newline, mask 0
    assert not m[n - 1] and m[n - 2]


def test_packing_keeps_segments_separate(tok):
  exs = _examples(40)
  padded = tokenize_examples(exs, tok, 512)
  packed = tokenize_examples(exs, tok, 512, pack=True)
  assert packed["tokens"].shape[0] < padded["tokens"].shape[0]
  assert packed["loss_mask"].sum() == padded["loss_mask"].sum()
  seen = []
  for r in range(packed["tokens"].shape[0]):
    seg, pos = packed["segment_ids"][r], packed["positions"][r]
    ids = [s for s in np.unique(seg) if s > 0]
    assert ids == list(range(1, len(ids) + 1))
    for s in ids:
      where = np.flatnonzero(seg == s)
      assert (np.diff(where) == 1).all()  # contiguous
      assert pos[where].tolist() == list(range(len(where)))  # positions restart
      assert packed["tokens"][r, where[0]] == tok.convert_tokens_to_ids("<|im_start|>")
      assert packed["loss_mask"][r, where[0]] == 0  # no weight across a boundary
      m = packed["loss_mask"][r, where] > 0
      seen.append(tok.decode(packed["tokens"][r, where][m]))
    assert (packed["tokens"][r][seg == 0] == tok.pad_token_id).all()
    assert (packed["loss_mask"][r][seg == 0] == 0).all() and (pos[seg == 0] == 0).all()
  assert sorted(seen) == sorted(e.response + "<|im_end|>" for e in exs)


def test_determinism_and_seeded_shuffle(tok):
  exs = _examples(40)
  a = tokenize_examples(exs, tok, 256, pack=True, shuffle=True, seed=3)
  b = tokenize_examples(exs, tok, 256, pack=True, shuffle=True, seed=3)
  c = tokenize_examples(exs, tok, 256, pack=True, shuffle=True, seed=4)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["tokens"], c["tokens"]) or a["tokens"].shape != c["tokens"].shape


def test_truncation_policies(tok):
  long = Example("x", "p" * 50, "r" * 100, uid="x/long")
  short = Example("x", "p", "r", uid="x/short")
  lengths = [len(t) for t, _ in encode_examples([long, short], tok)]
  assert lengths[1] < 40 < lengths[0]
  right = tokenize_examples([long, short], tok, 100)
  assert right["tokens"].shape == (2, 100) and right["loss_mask"][0].sum() > 0
  assert right["segment_ids"][0].all()  # the long one fills its row
  assert tokenize_examples([long, short], tok, 100, truncation="drop")["tokens"].shape == (1, 100)
  with pytest.raises(ValueError, match="x/long"):
    tokenize_examples([long, short], tok, 100, truncation="error")
  # Cut before the response starts: nothing to learn, so the example is dropped.
  assert tokenize_examples([long, short], tok, 40)["tokens"].shape == (1, 40)


def test_missing_template_or_end_token_is_explained(tok, tmp_path):
  tok.save_pretrained(tmp_path / "t")
  bare = load_tokenizer(tmp_path / "t" / "tokenizer.json")
  with pytest.raises(ValueError, match="chat template"):
    tokenize_examples(_examples(1), bare, 64)
  with pytest.raises(ValueError, match="end_token"):
    encode_examples(_examples(1), tok, end_token="<pad>")
