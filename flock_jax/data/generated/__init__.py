"""Q/A domains the project generates itself: deterministic from a seed, exact answers.

No finance, medical or legal Q/A ships in a wheel we could find, so these
templates stand in for private, domain-specific client data. Every example's
response shows the working and ends with `The answer is X.`; `Example.answer`
holds X for exact-match evaluation.
"""

from flock_jax.data.generated.finance import generate_finance
from flock_jax.data.generated.medical import generate_medical

GENERATORS = {"finance": generate_finance, "medical": generate_medical}

__all__ = ["GENERATORS", "generate_finance", "generate_medical"]
