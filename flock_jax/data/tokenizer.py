"""Tokenizers: an in-process byte-level chat tokenizer, and loading saved ones.

`byte_tokenizer()` builds a transformers `PreTrainedTokenizerFast` with no
download and no training: token id b is the byte b (0..255), then four
special tokens, and a ChatML chat template like SmolLM2's (without its
default system prompt), so `apply_chat_template` works exactly as with the
real model's tokenizer. Tiny random models in tests and the default job use it.

  id   token
  0-255  the 256 bytes (GPT-2's byte-to-unicode alphabet, so any text round-trips)
  256  <|endoftext|>   unk
  257  <|im_start|>    bos (starts every chat turn)
  258  <|im_end|>      eos (ends every chat turn; the loss covers it)
  259  <pad>           pad
"""

from __future__ import annotations

import pathlib

from transformers import PreTrainedTokenizerFast

IM_START, IM_END, ENDOFTEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<pad>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, PAD)
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# SmolLM2-Instruct's ChatML template, minus the default system turn it inserts.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable unicode characters."""
  keep = (
      list(range(ord("!"), ord("~") + 1))
      + list(range(ord("¡"), ord("¬") + 1))
      + list(range(ord("®"), ord("ÿ") + 1))
  )
  chars, extra = {}, 0
  for b in range(256):
    if b in keep:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
  """The byte-level ChatML tokenizer (vocabulary 260; see the module table)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

  alphabet = _bytes_to_unicode()
  tok = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
  hf = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=IM_START, eos_token=IM_END, pad_token=PAD, unk_token=ENDOFTEXT
  )
  hf.chat_template = CHATML_TEMPLATE
  assert len(hf) == BYTE_VOCAB_SIZE and hf.convert_tokens_to_ids(PAD) == 259
  return hf


def load_tokenizer(path_or_name: str | pathlib.Path) -> PreTrainedTokenizerFast:
  """A tokenizer from "byte", a tokenizer.json file, or a folder holding one.

  A folder with tokenizer_config.json (what `save_pretrained` writes) loads
  with its special tokens and chat template; a bare tokenizer.json loads as
  is (set `chat_template` yourself if it has none). Never downloads: a name
  that is not a local path raises FileNotFoundError.
  """
  if str(path_or_name) == "byte":
    return byte_tokenizer()
  p = pathlib.Path(path_or_name).expanduser()
  if p.is_file() and p.name.endswith(".json"):
    return PreTrainedTokenizerFast(tokenizer_file=str(p))
  if p.is_dir() and (p / "tokenizer_config.json").exists():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
  if p.is_dir() and (p / "tokenizer.json").exists():
    return PreTrainedTokenizerFast(tokenizer_file=str(p / "tokenizer.json"))
  raise FileNotFoundError(
      f"no tokenizer at {p}: pass 'byte', a tokenizer.json file, or a folder with "
      f"tokenizer.json (e.g. written by tokenizer.save_pretrained). Hub names are not "
      f"downloaded; save the tokenizer on a connected machine and pass its folder."
  )
