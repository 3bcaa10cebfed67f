"""Prompts with Gemma 3's vocabulary are exactly the whole prompt's tokens.

Gemma's tokenizer has no dummy prefix and keeps "\\n", so the budgeted prompt
(paper section 3.2) is only exact because its pieces meet where Gemma never
merges (`tasks.vocab.PromptLayout`). Checked on every history of the real
Gift_Cards data, at the paper's 1,024-token budget and at one that forces
truncation, in plain Python (inference) and through the seqio preprocessors
(training).
"""

import gemma_testdata
import pytest
import seqio
import tasks_testdata

from tasks import preprocessors
from tasks import vocab

# The paper's input budget (section 4), and one that drops items from most
# Gift_Cards histories of three or more items (an item is ~40 Gemma tokens).
BUDGETS = (1024, 100)


@pytest.fixture(scope="module")
def vocabulary():
  return gemma_testdata.vocabulary()


@pytest.fixture(scope="module")
def histories():
  return gemma_testdata.gift_cards_histories()


def test_gemma_vocabulary_passes_the_additivity_check(vocabulary, histories):
  assert vocab.prompt_layout(vocabulary) is vocab.NEWLINE_FIRST
  assert vocab.pieces_across_boundaries(vocabulary,
                                        vocab.NEWLINE_FIRST) == []
  vocab.check_prompt_additivity(vocabulary, histories[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_gift_cards_prompt_is_the_whole_prompts_tokens(
    vocabulary, histories, budget):
  checked = truncated = 0
  for history, target in histories:
    try:
      prompt = preprocessors.budgeted_prompt(history, vocabulary, budget)
    except ValueError:
      continue  # the newest item alone exceeds the budget
    assert list(prompt.token_ids) == vocabulary.encode(prompt.text)
    assert len(prompt.token_ids) <= budget
    # The target continues the prompt: the joint sequence tokenizes alike.
    target_piece = vocab.NEWLINE_FIRST.item_piece(target)
    target_tokens = vocabulary.encode(target_piece)
    assert (vocabulary.encode(prompt.text + target_piece) ==
            list(prompt.token_ids) + target_tokens)
    checked += 1
    truncated += prompt.num_dropped > 0
  assert checked >= 0.99 * len(histories) > 2000
  if budget < 1024:
    assert truncated > len(histories) // 2
  print(f"budget {budget}: {checked} of {len(histories)} Gift_Cards "
        f"histories exact, {truncated} truncated")


@pytest.mark.slow
@pytest.mark.parametrize("budget", BUDGETS)
def test_pipeline_prompts_and_targets_equal_the_python_ones(
    vocabulary, histories, budget):
  features = {"inputs": seqio.Feature(vocabulary, add_eos=False),
              "targets": seqio.Feature(vocabulary, add_eos=True)}
  fitting = []
  for history, target in histories:
    try:
      fitting.append(((history, target), preprocessors.budgeted_prompt(
          history, vocabulary, budget).token_ids))
    except ValueError:
      pass
  ds = preprocessors.tokenize_items(
      tasks_testdata.history_records([pair for pair, _ in fitting]), features)
  ds = preprocessors.to_inputs_and_targets(ds, {"inputs": budget}, features)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == len(fitting)
  for ((_, target), prompt), example in zip(fitting, examples):
    assert example["inputs"].tolist() == list(prompt)
    # EOS comes later (seqio.preprocessors.append_eos_after_trim).
    assert example["targets"].tolist() == vocabulary.encode(
        vocab.NEWLINE_FIRST.item_piece(target))
