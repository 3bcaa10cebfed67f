"""The SentencePiece vocabulary: special ids, CLI, prompt additivity."""

import random
import re

import pytest
import seqio
import sentencepiece as spm
import tasks_testdata

from conftest import REPO_ROOT
from pipelines import templates
from tasks import vocab


def _write_output(data_dir, texts_by_category):
  """A finished preprocessing output with these corpora: manifest.json last."""
  for seed, (category, texts) in enumerate(texts_by_category.items()):
    tasks_testdata.write_category(data_dir, category, num_users=2, seed=seed)
    tasks_testdata.write_corpus(data_dir, category, texts)
  tasks_testdata.write_manifest(data_dir)


def test_cli_warns_when_the_corpora_make_fewer_pieces(tmp_path, caplog):
  _write_output(tmp_path / "data", {
      "Arts": tasks_testdata.random_item_texts(random.Random(0), 50, "Arts")})
  output = tmp_path / "small.model"
  vocab.main([f"--data_dir={tmp_path / 'data'}", f"--output={output}",
              "--vocab_size=5000"])
  pieces = vocab.get_vocabulary(output).tokenizer.get_piece_size()
  assert pieces < 5000
  assert (f"too little text for 5000 pieces: the model has {pieces}"
          in caplog.text)


def test_cli_trains_model_with_t5_special_ids(tmp_path):
  rng = random.Random(0)
  _write_output(tmp_path / "data", {
      "Arts": tasks_testdata.random_item_texts(rng, 200, "Arts"),
      "Pet": tasks_testdata.random_item_texts(rng, 200, "Pet Supplies")})
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
  history = tasks_testdata.random_item_texts(rng, 4, "Pet Supplies")
  vocab.check_prompt_additivity(vocabulary, history)


def test_corpora_are_those_the_manifest_lists(tmp_path):
  data_dir = tmp_path / "data"
  _write_output(data_dir, {"Arts": ["Title: A."], "Pet": ["Title: P."]})
  # A folder left by another run, after the manifest: not this output's.
  tasks_testdata.write_corpus(data_dir, "Stale", ["Title: S."])
  assert vocab.find_corpora(data_dir) == [
      str(data_dir / "Arts" / "corpus.parquet"),
      str(data_dir / "Pet" / "corpus.parquet")]
  assert list(vocab.read_corpus_texts(data_dir)) == ["Title: A.", "Title: P."]


@pytest.mark.parametrize("args,message", [
    (["--data_dir={missing}", "--output=x.model"], "is not a folder"),
    (["--data_dir={tmp}", "--output=x.bin"], "must end in '.model'"),
    (["--data_dir={tmp}", "--output=x.model", "--vocab_size=100"],
     "at least 300"),
    # A folder, but no finished preprocessing output.
    (["--data_dir={tmp}", "--output=x.model"],
     "has no manifest.json: preprocessing did not finish"),
])
def test_cli_validates_arguments(tmp_path, capsys, args, message):
  args = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
  with pytest.raises(SystemExit):
    vocab.main(args)
  assert message in capsys.readouterr().err


def test_cli_default_vocab_size_fits_the_shipped_models(capsys):
  with pytest.raises(SystemExit):
    vocab.main(["--help"])
  help_text = " ".join(capsys.readouterr().out.split())
  default = re.search(r"--vocab_size VOCAB_SIZE [^()]*\(default: (\d+)\)",
                      help_text)
  assert default, help_text
  for model in ("base", "large"):
    gin_text = (REPO_ROOT / "trainer" / "configs" / "models" /
                f"{model}.gin").read_text()
    model_size = re.search(r"TransformerConfig\.vocab_size = (\d+)", gin_text)
    assert int(default[1]) <= int(model_size[1]), model


def test_rejects_model_with_other_special_ids(tmp_path):
  sentences = tmp_path / "s.txt"
  sentences.write_text("\n".join(
      tasks_testdata.random_item_texts(random.Random(1), 100, "Arts")))
  spm.SentencePieceTrainer.train(input=str(sentences),
                                 model_prefix=str(tmp_path / "default"),
                                 vocab_size=60, minloglevel=2)
  with pytest.raises(ValueError, match=r"\(pad, eos\) are \(-1, 2\)"):
    vocab.get_vocabulary(tmp_path / "default.model")


def test_accepts_any_unk_and_bos_when_pad_and_eos_are_0_and_1(tmp_path):
  sentences = tmp_path / "s.txt"
  sentences.write_text("\n".join(
      tasks_testdata.random_item_texts(random.Random(1), 100, "Arts")))
  spm.SentencePieceTrainer.train(
      input=str(sentences), model_prefix=str(tmp_path / "bos"),
      vocab_size=80, pad_id=0, eos_id=1, bos_id=5, unk_id=7, minloglevel=2)
  vocabulary = vocab.get_vocabulary(tmp_path / "bos.model")
  assert (vocabulary.unk_id, vocabulary.bos_id) == (7, 5)
  assert vocab.decoder_start_id(vocabulary) == 5


def test_decoder_start_is_0_without_bos():
  assert vocab.decoder_start_id(seqio.ByteVocabulary()) == 0


@pytest.mark.parametrize("layout",
                         [vocab.NEWLINE_FIRST, vocab.NEWLINE_LAST])
def test_prompt_pieces_concatenate_to_the_prompt(layout):
  history = tasks_testdata.random_item_texts(random.Random(2), 3, "Arts")
  assert "".join(layout.pieces(history)) == templates.user_prompt(history)


def test_layouts_split_before_or_after_the_newline():
  history = ["Title: A.", "Title: B."]
  assert vocab.NEWLINE_FIRST.pieces(history)[2:5] == [
      " Title: A.", "\nThe next item bought is as follows.", " Title: B."]
  assert vocab.NEWLINE_LAST.pieces(history)[2:5] == [
      " Title: A.\n", "The next item bought is as follows.", " Title: B.\n"]
  # Every piece ends with "." or "\n" and the next starts with " ", "\n" or
  # "The".
  assert vocab.NEWLINE_FIRST.boundaries() == {". ", ".\n"}
  assert vocab.NEWLINE_LAST.boundaries() == {". ", "\nT"}


def test_additivity_holds_for_a_byte_vocabulary():
  # Bytes are additive: the pieces spell the prompt exactly.
  history = [templates.item_text("A", "B", "C", "D")] * 2
  vocab.check_prompt_additivity(seqio.ByteVocabulary(), history)


def test_additivity_check_rejects_a_piece_across_a_boundary(tmp_path):
  sentences = tmp_path / "s.txt"
  sentences.write_text("\n".join(
      tasks_testdata.random_item_texts(random.Random(1), 100, "Arts")))
  spm.SentencePieceTrainer.train(
      input=str(sentences), model_prefix=str(tmp_path / "merging"),
      vocab_size=80, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      user_defined_symbols=[".\u2581Title"], minloglevel=2)
  vocabulary = vocab.get_vocabulary(tmp_path / "merging.model")
  assert vocab.prompt_layout(vocabulary) is vocab.NEWLINE_FIRST
  assert vocab.pieces_across_boundaries(
      vocabulary, vocab.NEWLINE_FIRST) == [".\u2581Title"]
  history = [templates.item_text("A", "B", "C", "D")]
  with pytest.raises(ValueError, match="concatenation of its pieces"):
    vocab.check_prompt_additivity(vocabulary, history)
