"""The SentencePiece vocabulary: special ids, CLI, prompt additivity."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import sentencepiece as spm

from tasks import templates
from tasks import test_utils
from tasks import vocab


def _write_corpus(data_dir, category, texts):
  (data_dir / category).mkdir(parents=True)
  pq.write_table(pa.table({"item_id": [f"B{i}" for i in range(len(texts))],
                           "text": texts}),
                 data_dir / category / "corpus.parquet")


def test_cli_trains_model_with_t5_special_ids(tmp_path):
  rng = random.Random(0)
  _write_corpus(tmp_path / "data", "Arts",
                test_utils.random_item_texts(rng, 200, "Arts"))
  _write_corpus(tmp_path / "data", "Pet",
                test_utils.random_item_texts(rng, 200, "Pet Supplies"))
  output = tmp_path / "out" / "calrec.model"
  vocab.main([f"--data_dir={tmp_path / 'data'}", f"--output={output}",
              "--vocab_size=400"])
  vocabulary = vocab.get_vocabulary(output)
  assert isinstance(vocabulary, seqio.SentencePieceVocabulary)
  processor = vocabulary.tokenizer
  assert (processor.pad_id(), processor.eos_id(), processor.unk_id(),
          processor.bos_id()) == (0, 1, 2, -1)
  # Byte fallback: unseen characters round-trip instead of becoming unk.
  text = "Title: Ünïcode ☃ Pet Supplies. Brand: Unknown."
  assert vocab.UNK_ID not in vocabulary.encode(text)
  assert vocabulary.decode(vocabulary.encode(text)) == text
  history = test_utils.random_item_texts(rng, 4, "Pet Supplies")
  vocab.check_prompt_additivity(vocabulary, history)


@pytest.mark.parametrize("args,message", [
    (["--data_dir={missing}", "--output=x.model"], "is not a folder"),
    (["--data_dir={tmp}", "--output=x.bin"], "must end in '.model'"),
    (["--data_dir={tmp}", "--output=x.model", "--vocab_size=100"],
     "at least 300"),
])
def test_cli_validates_arguments(tmp_path, capsys, args, message):
  args = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
  with pytest.raises(SystemExit):
    vocab.main(args)
  assert message in capsys.readouterr().err


def test_cli_explains_folder_without_corpora(tmp_path):
  with pytest.raises(FileNotFoundError, match="corpus.parquet"):
    vocab.main([f"--data_dir={tmp_path}", f"--output={tmp_path / 'v.model'}"])


def test_rejects_model_with_other_special_ids(tmp_path):
  sentences = tmp_path / "s.txt"
  sentences.write_text("\n".join(
      test_utils.random_item_texts(random.Random(1), 100, "Arts")))
  spm.SentencePieceTrainer.train(input=str(sentences),
                                 model_prefix=str(tmp_path / "default"),
                                 vocab_size=60, minloglevel=2)
  with pytest.raises(ValueError, match=r"\(pad, eos, unk\)"):
    vocab.get_vocabulary(tmp_path / "default.model")


def test_additivity_check_rejects_byte_vocabulary():
  history = [templates.item_text("A", "B", "C", "D")]
  with pytest.raises(ValueError, match="concatenation of its pieces"):
    vocab.check_prompt_additivity(seqio.ByteVocabulary(), history)
