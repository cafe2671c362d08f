"""What a run measures beyond held-out loss: generation-based metrics of the global model.

scores.py   attack success rate (target contained / exact) and exact-match accuracy
code_exec.py  HumanEval pass@k: generated code run against its unit tests in a guarded,
            resource-limited subprocess
prompts.py  the evaluation prompts of a run: clean per domain, triggered and untriggered
report.py   `generation_report(engine, lora)`: every domain's prompts in one batched
            KV-cache generation call, scored; what each round's metrics row carries
"""

from flock_jax.eval.prompts import EvalPrompts, build_eval_prompts
from flock_jax.eval.report import generation_report
from flock_jax.eval.scores import accuracy, attack_success

__all__ = [
    "EvalPrompts",
    "accuracy",
    "attack_success",
    "build_eval_prompts",
    "generation_report",
]
