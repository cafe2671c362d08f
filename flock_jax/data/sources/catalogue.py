"""The hub data sets flock_jax knows by short name: repository id, schema adapter, domain.

Its own module so that the file loader (local copies of these sets) and the hub loader both
read it without importing each other.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class HubSet:
  """A known hub data set: its repository id, schema adapter and domain."""

  repo: str
  adapter: str
  domain: str
  answer_key: str | None = None  # column with an exact answer, if any


# The instruction sets the federated-LLM literature uses most (licences: third_party/DATA.md).
HUB_SETS: dict[str, HubSet] = {
    "alpaca-gpt4": HubSet("vicgalle/alpaca-gpt4", "alpaca", "general"),
    "fingpt-sentiment": HubSet(
        "FinGPT/fingpt-sentiment-train", "alpaca", "finance", answer_key="output"
    ),
    "medical-flashcards": HubSet(
        "medalpaca/medical_meadow_medical_flashcards", "alpaca", "medical"
    ),
    "code-alpaca": HubSet("sahil2801/CodeAlpaca-20k", "alpaca", "code"),
    "dolly": HubSet("databricks/databricks-dolly-15k", "dolly", "general"),
}
