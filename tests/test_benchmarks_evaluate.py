"""benchmarks/evaluate: its flag checks and the pure helpers its peer rows
share with the evaluator (sample texts, Algorithm 1 per kept text)."""

import numpy as np
import pytest

from benchmarks import evaluate


class _Vocabulary:
  """Ids 3.. spell letters; 7 is a newline piece, 1 EOS."""

  eos_id = 1

  def decode(self, ids):
    return "".join("\n" if i == 7 else "abcdefgh"[i - 3] for i in ids)


def test_a_sample_ends_at_its_first_stop_id_which_it_scores():
  text, length = evaluate.sample_text([3, 4, 7, 5, 6], frozenset({1, 7}),
                                      _Vocabulary())
  assert (text, length) == ("ab", 3)
  assert evaluate.sample_text([3, 1, 5], frozenset({1, 7}),
                              _Vocabulary()) == ("a", 2)
  assert evaluate.sample_text([3, 4], frozenset({1}), _Vocabulary()) == (
      "ab", 2)


def test_rank_user_fuses_one_search_per_kept_text():
  corpus = {"red": np.array([3.0, 1.0, 0.0]),
            "blue": np.array([0.0, 2.0, 5.0])}
  samples = [("red", -1.0), ("blue", -2.0), ("red", -3.0)]
  # Both rows scale to 1 at their best item; red's log-prob is higher.
  assert evaluate.rank_user(samples, 0, corpus.__getitem__) == (1, 1)
  assert evaluate.rank_user(samples, 2, corpus.__getitem__) == (2, 2)


@pytest.mark.parametrize("flags", [["--rows=project,gpu"], ["--rows="],
                                   ["--temperature=0"], ["--max_users=0"]])
def test_bad_flags_are_usage_errors(flags, capsys):
  with pytest.raises(SystemExit):
    evaluate.parse_args(flags)
  assert "usage:" in capsys.readouterr().err


def test_rows_parse_to_a_list():
  assert evaluate.parse_args(["--rows=tiny,transformers"]).rows == [
      "tiny", "transformers"]
