"""flock_jax: decentralized, blockchain-secured federated LoRA fine-tuning of Llama in JAX."""

from setuptools import find_packages, setup

# Versions measured to install together on Python 3.11 (see shared STACK notes).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "numpy>=2.0,<2.5",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",
    "datasets==5.2.0",
    "gguf==0.19.0",
    "web3==8.0.0",
    "eth-tester[py-evm]==0.14.0b1",
    "py-evm==0.12.1b1",
    "coincurve==21.0.0",
    "vyper==0.4.3",
    "jinja2",
]

EXTRAS = {
    # Reference implementations for parity tests; torch pinned exactly (CPU wheel).
    "torch": ["torch==2.13.0", "peft", "accelerate"],
    "test": ["pytest", "pytest-xdist", "hypothesis", "pyink==26.5.1", "matplotlib==3.11.2"],
}
EXTRAS["test"] = EXTRAS["test"] + EXTRAS["torch"]

setup(
    name="flock_jax",
    version="0.1.0",
    description="FLock: decentralized, blockchain-secured federated fine-tuning of LLMs, in JAX.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["flock_jax", "flock_jax.*"]),
    package_data={"flock_jax": ["py.typed"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
