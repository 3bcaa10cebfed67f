r"""SentencePiece vocabulary of the CALRec tasks (paper sections 3.2 and 4).

Ids: pad=0, eos=1, unk=2, no bos, as seqio and t5x expect.

Use an existing model (e.g. the tokenizer of a pretrained LM):

  vocabulary = tasks.vocab.get_vocabulary("/path/to/spm.model")

or train one on the item corpora and prompt strings of a preprocessing output:

  python -m tasks.vocab --data_dir=OUTPUT_DIR --output=vocab/calrec.model \
      --vocab_size=8192

Paths may be local or any filesystem of `tf.io.gfile` (e.g. gs://).

The prompt's token sequence is built from separately tokenized pieces (user
prefix, item prefixes, item texts; see `tasks.preprocessors`), so a vocabulary
must tokenize the prompt as the concatenation of its pieces.
`check_prompt_additivity` verifies that; models trained here pass it because
their default normalisation (`nmt_nfkc`) maps "\n" to a space and SentencePiece
never merges pieces across spaces.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Iterable, Iterator, Sequence

from absl import logging
import pyarrow as pa
import pyarrow.parquet as pq
import seqio
import sentencepiece as spm
import tensorflow as tf

from tasks import manifest
from tasks import templates

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

# SentencePiece trains on a random sample of at most this many sentences (item
# texts): its trainer holds about 22 bytes per input character (300,000 texts
# of ~130 characters took 840 MB), so the cap bounds it near 1.5 GB however
# large the corpora.
_MAX_TRAINING_SENTENCES = 500_000
_MIN_VOCAB_SIZE = 300
# TransformerConfig.vocab_size of trainer/configs/models/base.gin and large.gin.
DEFAULT_VOCAB_SIZE = 8192


def get_vocabulary(model_path: str | os.PathLike[str]) -> seqio.Vocabulary:
  """A `seqio.SentencePieceVocabulary` for a SentencePiece model file.

  Raises:
    FileNotFoundError: the model file does not exist.
    ValueError: the model's special ids are not pad=0, eos=1, unk=2.
  """
  model_path = os.fspath(model_path)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(
        f"SentencePiece model {model_path!r} not found; train one with "
        "`python -m tasks.vocab --data_dir=... --output=...`.")
  vocabulary = seqio.SentencePieceVocabulary(model_path)
  processor = vocabulary.tokenizer
  ids = (processor.pad_id(), processor.eos_id(), processor.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise ValueError(
        f"{model_path}: special ids (pad, eos, unk) are {ids}, expected "
        f"({PAD_ID}, {EOS_ID}, {UNK_ID}).")
  return vocabulary


def prompt_pieces(history_item_texts: Sequence[str]) -> list[str]:
  """The pieces whose tokenizations concatenate to the prompt's tokens."""
  pieces = [templates.USER_PREFIX]
  for position, text in enumerate(history_item_texts):
    pieces += [templates.item_prefix(position), text]
  pieces.append(templates.NEXT_ITEM_PREFIX)
  return pieces


def check_prompt_additivity(vocabulary: seqio.Vocabulary,
                            history_item_texts: Sequence[str]) -> None:
  """Raises ValueError unless the prompt tokenizes piece by piece.

  Budget truncation (`tasks.preprocessors`) counts and concatenates the tokens
  of the prompt's pieces; this check makes sure that equals tokenizing the
  whole prompt string, for the given probe history.
  """
  whole = vocabulary.encode(templates.user_prompt(history_item_texts))
  by_piece = [token for piece in prompt_pieces(history_item_texts)
              for token in vocabulary.encode(piece)]
  if list(whole) != by_piece:
    raise ValueError(
        "This vocabulary tokenizes the prompt differently from the "
        "concatenation of its pieces (user prefix, item prefixes, item "
        "texts), so input-budget truncation could not be exact. Use a "
        "SentencePiece model that splits on whitespace and normalises "
        "'\\n' to a space (e.g. one trained by `python -m tasks.vocab`).")


def find_corpora(data_dir: str | os.PathLike[str]) -> list[str]:
  """The corpus.parquet files that data_dir's manifest.json lists.

  Raises:
    FileNotFoundError: data_dir has no manifest.json (an unfinished
      preprocessing run, or not its output folder).
    ValueError: the manifest lists no category.
  """
  return [os.path.join(os.fspath(data_dir), entry["corpus"])
          for entry in manifest.read_categories(data_dir).values()]


def read_corpus_texts(data_dir: str | os.PathLike[str]) -> Iterator[str]:
  """The item texts of every corpus that data_dir's manifest.json lists.

  Raises:
    FileNotFoundError, ValueError: as `find_corpora` (raised by this call,
      not when iterating).
  """
  return _read_texts(find_corpora(data_dir))


def _read_texts(corpora: Sequence[str]) -> Iterator[str]:
  """Yields the non-empty `text` column values of the corpora."""
  for corpus in corpora:
    logging.info("Reading %s", corpus)
    # Read whole (a corpus is small) through gfile, which any filesystem of
    # tf.io.gfile serves; pyarrow cannot read a GFile directly.
    with tf.io.gfile.GFile(corpus, "rb") as f:
      parquet = pq.ParquetFile(pa.BufferReader(f.read()))
    for batch in parquet.iter_batches(columns=["text"]):
      yield from (text for text in batch.column(0).to_pylist() if text)


def train_sentencepiece(texts: Iterable[str],
                        output: str | os.PathLike[str],
                        vocab_size: int,
                        seed: int = 0) -> str:
  """Trains a unigram SentencePiece model on texts plus the prompt strings.

  Args:
    texts: training sentences (item texts), one per element.
    output: path of the model file to write, ending in ".model" (local or any
      `tf.io.gfile` filesystem); the ".vocab" file is written beside it.
    vocab_size: number of pieces, special and byte-fallback pieces included.
    seed: seed of SentencePiece's sentence sampling.

  Returns:
    The path of the written model file.
  """
  output = os.fspath(output)
  if not output.endswith(".model"):
    raise ValueError(f"--output must end in '.model', got {output!r}.")
  prompt_strings = [templates.USER_PREFIX, templates.FIRST_ITEM_PREFIX,
                    templates.NEXT_ITEM_PREFIX.strip()]
  spm.set_random_generator_seed(seed)
  with tempfile.TemporaryDirectory() as tmp:
    sentences = os.path.join(tmp, "sentences.txt")
    num_sentences = 0
    with open(sentences, "w", encoding="utf-8") as f:
      for text in prompt_strings:
        f.write(text + "\n")
      for text in texts:
        f.write(" ".join(text.split()) + "\n")
        num_sentences += 1
    if not num_sentences:
      raise ValueError("No training texts: the item corpora are empty.")
    logging.info("Training a %d-piece SentencePiece model on %d texts",
                 vocab_size, num_sentences)
    model_prefix = os.path.join(tmp, "model")
    spm.SentencePieceTrainer.train(
        input=sentences,
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        byte_fallback=True,
        character_coverage=0.9995,
        input_sentence_size=_MAX_TRAINING_SENTENCES,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,
        num_threads=os.cpu_count() or 1,
        minloglevel=2)
    tf.io.gfile.makedirs(os.path.dirname(output) or ".")
    for suffix in (".model", ".vocab"):
      tf.io.gfile.copy(model_prefix + suffix,
                       output[:-len(".model")] + suffix, overwrite=True)
  return output


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog="python -m tasks.vocab",
      description="Trains the SentencePiece vocabulary of the CALRec tasks on "
      "the item corpora of a preprocessing output.")
  parser.add_argument("--data_dir", required=True,
                      help="output folder of `python -m pipelines.preprocess`")
  parser.add_argument("--output", required=True,
                      help="model file to write, ending in '.model'")
  parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE,
                      help="number of pieces, special and byte pieces "
                      "included; must not exceed TransformerConfig.vocab_size "
                      "of the model gin (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of SentencePiece's sentence sampling "
                      "(default: %(default)s)")
  args = parser.parse_args(argv)
  if not tf.io.gfile.isdir(args.data_dir):
    parser.error(f"--data_dir {args.data_dir!r} is not a folder; pass the "
                 "output folder of `python -m pipelines.preprocess`.")
  if not args.output.endswith(".model"):
    parser.error(f"--output must end in '.model', got {args.output!r}.")
  # Byte fallback takes 256 pieces; the three special ids come on top.
  if args.vocab_size < _MIN_VOCAB_SIZE:
    parser.error(f"--vocab_size must be at least {_MIN_VOCAB_SIZE}, got "
                 f"{args.vocab_size}.")
  try:
    find_corpora(args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    parser.error(str(e))
  return args


def main(argv: Sequence[str] | None = None) -> None:
  logging.set_verbosity(logging.INFO)
  args = _parse_args(argv)
  model = train_sentencepiece(read_corpus_texts(args.data_dir), args.output,
                              args.vocab_size, args.seed)
  pieces = get_vocabulary(model).tokenizer.get_piece_size()
  logging.info("Wrote %s (%d pieces)", model, pieces)
  if pieces < args.vocab_size:
    logging.warning("The corpora hold too little text for %d pieces: the "
                    "model has %d.", args.vocab_size, pieces)


if __name__ == "__main__":
  main()
