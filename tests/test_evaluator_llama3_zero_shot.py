"""A Llama 3 checkpoint downloaded elsewhere, through conversion and sampling.

A tiny random transformers Llama model (Llama 3 rope scaling, untied
output) is saved with a Llama-3-style `tokenizer.json` (trained by the
`tokenizers` library with Llama 3's split, `test_tasks_llama3_prompts`),
converted by `trainer.convert`, and sampled by the evaluator's generator:
its prompts are the whole prompts' tokens in the `tokenizers` library,
split after each newline (`tasks.vocab.NEWLINE_LAST`), and every sample
stops at its item's end, newline cut.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluator import generation
from evaluator import model_handler
from pipelines import templates
from tasks import preprocessors
from tasks import vocab
from trainer import convert
from trainer import model_dir as model_dir_lib

# pylint: disable-next=g-bad-import-order
import test_tasks_llama3_prompts as llama3

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(the trained tokenizer, the converted model directory)."""
  folder = tmp_path_factory.mktemp("llama3")
  trained = llama3.Trained("llama3", folder)
  tokenizer = trained.reference
  config = transformers.LlamaConfig(
      vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
      intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, tie_word_embeddings=False,
      eos_token_id=tokenizer.token_to_id(llama3.EOS),
      pad_token_id=tokenizer.token_to_id(llama3.PAD), bos_token_id=None,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                       "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64})
  torch.manual_seed(0)
  source = folder / "hf"
  transformers.LlamaForCausalLM(config).save_pretrained(source)
  tokenizer.save(str(source / "tokenizer.json"))
  model_dir = folder / "model"
  assert convert.main(["--source", str(source), "--output_dir",
                       str(model_dir), "--name", "tiny_llama3",
                       "--inputs_length", "200"]) == 0
  return trained, model_dir


@pytest.mark.slow
def test_converted_llama3_samples_real_prompts_to_the_items_end(converted):
  trained, model_dir = converted
  stored = json.loads((model_dir / "vocabulary.json").read_text())
  # The file's pad and EOS moved to 0 and 1.
  assert stored["model"]["vocab"][llama3.PAD] == 0
  assert stored["model"]["vocab"][llama3.EOS] == 1
  loaded = model_dir_lib.load_for_inference(model_dir)
  assert vocab.prompt_layout(loaded.vocabulary) is vocab.NEWLINE_LAST
  histories = [history for history, _ in
               llama3.generated_histories(6, seed=5)]
  for history in histories:
    prompt = preprocessors.budgeted_prompt(
        history, loaded.vocabulary, loaded.prompt_length - 1)
    assert trained.tokens(prompt.token_ids) == trained.reference_tokens(
        templates.user_prompt(history[prompt.num_dropped:]))
  generator = model_handler.GeneratorLoader(
      str(model_dir), num_generations=4, max_decode_length=24,
      batch_size=2, dtype="float32")()
  samples = generator.generate([
      generation.GenerationRequest(tuple(history), seed=index)
      for index, history in enumerate(histories)])
  assert [len(user) for user in samples] == [4] * len(histories)
  texts = [text for user in samples for text, _ in user]
  assert not any("\n" in text for text in texts)
  assert all(np.isfinite(score) and score <= 0
             for user in samples for _, score in user)
  # Seeded per user: the samples differ.
  assert len(set(texts)) > 1
