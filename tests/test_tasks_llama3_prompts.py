"""Prompts of Llama 3 and Qwen2.5 style vocabularies tokenize exactly.

Their pre-tokenizers keep a "." and the "\\n" after it in one pre-token, so
the prompt's pieces split after each "\\n" (`tasks.vocab.NEWLINE_LAST`, paper
section 3.2's prompt unchanged). The vocabularies are byte-level BPE models
trained here by the `tokenizers` library with the two models' split regexes
on item texts and prompts (merges such as ".\\n" and " Title" included), and
that library's tokenizer, an independent implementation, gives the tokens of
each whole prompt to match. Checked on generated histories (both splits),
and (slow, Llama 3's split) on every history of the real Gift_Cards data at
two budgets, through the Python path (`budgeted_prompt`) and the Tasks' TF
path. The TF path runs the same Python tokenizer as `budgeted_prompt`
(`tasks.bpe_vocab`), so it is checked with Llama 3's split only.
"""

from __future__ import annotations

import random

import gemma_testdata
import pytest
import seqio
import tasks_testdata

from pipelines import templates
from tasks import bpe_vocab
from tasks import mixtures
from tasks import preprocessors
from tasks import vocab

tokenizers = pytest.importorskip("tokenizers")

SPLITS = {"llama3": bpe_vocab.LLAMA3_SPLIT, "qwen2": bpe_vocab.QWEN2_SPLIT}
PAD, EOS = "<|pad|>", "<|end_of_text|>"
BUDGETS = (1024, 100)
# Gift_Cards items are 27 to 84 tokens of these small vocabularies (median
# 47): 150 tokens hold the newest item of every history and truncate most.
GIFT_CARDS_BUDGETS = (1024, 150)


def generated_histories(count: int, seed: int
                         ) -> list[tuple[list[str], str]]:
  rng = random.Random(seed)
  catalogue = tasks_testdata.random_item_texts(rng, 40, "Gift Cards")
  return [(rng.choices(catalogue, k=rng.randint(1, 9)), rng.choice(catalogue))
          for _ in range(count)]


def _training_texts() -> list[str]:
  """Prompts of generated histories, each followed by its target item and
  a newline, to train the merges on."""
  texts = []
  for history, target in generated_histories(300, 1):
    texts.append(templates.user_prompt(history) + " " + target + "\n")
  return texts


class Trained:
  """A `tokenizers` byte-level BPE tokenizer and the project's vocabulary
  of the same file."""

  def __init__(self, split: str, folder):
    model = tokenizers.models.BPE()
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(
            tokenizers.Regex(SPLITS[split]), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                            use_regex=False)])
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=900, special_tokens=[EOS, PAD],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tokenizer.train_from_iterator(_training_texts(), trainer)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    vocabulary_path = folder / "vocabulary.json"
    vocabulary_path.write_text(bpe_vocab.vocabulary_json_from_hf(
        path, eos_id=tokenizer.token_to_id(EOS),
        pad_id=tokenizer.token_to_id(PAD)))
    self.reference = tokenizer
    self.vocabulary_path = vocabulary_path
    self.vocabulary = vocab.get_vocabulary(vocabulary_path)
    self.stored = tokenizers.Tokenizer.from_file(str(vocabulary_path))

  def reference_tokens(self, text: str) -> list[str]:
    return self.reference.encode(text, add_special_tokens=False).tokens

  def tokens(self, ids) -> list[str]:
    return [self.stored.id_to_token(int(i)) for i in ids]


@pytest.fixture(scope="module", params=sorted(SPLITS))
def trained(request, tmp_path_factory):
  return Trained(request.param, tmp_path_factory.mktemp(request.param))


def test_merges_span_the_newline_first_boundary(trained):
  # The trained merges hold ".\n": split before the "\n", the pieces
  # would not tokenize as the whole prompt does.
  assert "." + bpe_vocab.byte_alphabet()[ord("\n")] in (
      trained.reference.get_vocab())
  assert ".\n" in vocab.pieces_across_boundaries(trained.vocabulary,
                                                 vocab.NEWLINE_FIRST)
  assert vocab.pieces_across_boundaries(trained.vocabulary,
                                        vocab.NEWLINE_LAST) == []
  assert vocab.prompt_layout(trained.vocabulary) is vocab.NEWLINE_LAST
  history = ["Title: A card. Category: B. Brand: C. Price: $5.", "Two."]
  vocab.check_prompt_additivity(trained.vocabulary, history)
  whole = trained.vocabulary.encode(templates.user_prompt(history))
  by_newline_first = [
      token for piece in vocab.NEWLINE_FIRST.pieces(history)
      for token in trained.vocabulary.encode(piece)]
  assert whole != by_newline_first


def _check_prompts(trained, histories, budget) -> tuple[int, int]:
  """Asserts every fitting prompt is the whole prompt's tokens and the
  target continues it; returns (checked, truncated)."""
  checked = truncated = 0
  for history, target in histories:
    try:
      prompt = preprocessors.budgeted_prompt(history, trained.vocabulary,
                                             budget)
    except ValueError:
      continue
    assert len(prompt.token_ids) <= budget
    assert trained.tokens(prompt.token_ids) == trained.reference_tokens(
        prompt.text)
    target_ids = trained.vocabulary.encode(
        vocab.NEWLINE_LAST.item_piece(target))
    assert trained.tokens(prompt.token_ids) + trained.tokens(target_ids) == (
        trained.reference_tokens(prompt.text + " " + target + "\n"))
    checked += 1
    truncated += prompt.num_dropped > 0
  return checked, truncated


@pytest.mark.parametrize("budget", BUDGETS)
def test_generated_prompts_are_the_whole_prompts_tokens(trained, budget):
  histories = generated_histories(150, 2)
  checked, truncated = _check_prompts(trained, histories, budget)
  assert checked == len(histories)
  assert (truncated > 0) == (budget < 1024)


def _features(vocabulary):
  return {"inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def _check_tf_path(trained, histories, budget) -> int:
  """The Tasks' block path gives budgeted_prompt's inputs and the target's
  piece then EOS; returns how many examples it checked."""
  features = _features(trained.vocabulary)
  fitting = []
  for history, target in histories:
    try:
      fitting.append(((history, target), preprocessors.budgeted_prompt(
          history, trained.vocabulary, budget).token_ids))
    except ValueError:
      pass
  ds = preprocessors.tokenize_items(
      tasks_testdata.history_records([pair for pair, _ in fitting]), features)
  ds = preprocessors.user_examples(ds, {"inputs": budget, "targets": 128},
                                   features, seed=0)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == len(fitting)
  for ((_, target), prompt), example in zip(fitting, examples):
    assert example["inputs"].tolist() == list(prompt)
    assert example["targets"].tolist() == trained.vocabulary.encode(
        " " + target + "\n") + [trained.vocabulary.eos_id]
  return len(examples)


def test_a_targets_newline_ends_the_sampled_item(trained):
  # The target's last token holds its "\n" (".\n" merged): a stop id, so a
  # sample ends where the target does.
  for _, target in generated_histories(20, 4):
    ids = trained.vocabulary.encode(vocab.NEWLINE_LAST.item_piece(target))
    assert trained.tokens(ids[-1:]) == trained.reference_tokens(".\n")
    assert ids[-1] in vocab.item_stop_ids(trained.vocabulary)
    assert not set(ids[:-1]) & set(vocab.item_stop_ids(trained.vocabulary))


# The TF path with Llama 3's split (see the module docstring).
@pytest.mark.parametrize("trained", ["llama3"], indirect=True)
def test_pipeline_prompts_and_targets_equal_the_python_ones(trained):
  assert _check_tf_path(trained, generated_histories(60, 3), 100) == 60


# The TF path with Llama 3's split (see the module docstring).
@pytest.mark.parametrize("trained", ["llama3"], indirect=True)
def test_registered_tasks_end_with_the_items_newline(trained, tmp_path):
  written = tasks_testdata.write_category(
      tmp_path, "Llama_Cat", num_users=4, seed=3,
      splits=("train", "validation"))
  tasks_testdata.write_manifest(tmp_path)
  names = mixtures.register_mixtures(tmp_path, trained.vocabulary_path)
  task = seqio.get_mixture_or_task(names["Llama_Cat"])
  lengths = {"inputs": 512, "targets": 64}
  ds = task.get_dataset(lengths, split="validation", shuffle=False)
  by_user = {ex["user_id"].decode(): ex for ex in ds.as_numpy_iterator()}
  assert len(by_user) == len(written["validation"])
  for user_id, texts in written["validation"]:
    example = by_user[user_id]
    assert trained.vocabulary.decode(example["targets"].tolist()) == (
        " " + texts[-1] + "\n")
    assert trained.tokens(example["inputs"]) == trained.reference_tokens(
        templates.user_prompt(texts[:-1]))


# Llama 3's split on the real data; Qwen2's differs only in splitting
# digits one by one, which the fast tier's generated prompts cover.
@pytest.mark.slow
@pytest.mark.parametrize("trained", ["llama3"], indirect=True)
@pytest.mark.parametrize("budget", GIFT_CARDS_BUDGETS)
def test_every_gift_cards_prompt_is_the_whole_prompts_tokens(trained,
                                                             budget):
  histories = gemma_testdata.gift_cards_histories()
  checked, truncated = _check_prompts(trained, histories, budget)
  assert checked >= 0.99 * len(histories) > 2000
  if budget < 1024:
    assert truncated > len(histories) // 2
  assert _check_tf_path(trained, histories, budget) == checked
