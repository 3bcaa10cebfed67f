r"""Vocabularies of the CALRec tasks (paper sections 3.2 and 4).

Ids: pad=0 and eos=1, as seqio and t5x expect; unk anywhere. Models trained
here have unk=2 and no BOS; a pretrained LM's vocabulary may have a BOS (Gemma
3: pad=0, eos=1, bos=2, unk=3), and then every decoder sequence starts with it
(`decoder_start_id`, docs/contracts.md).

Use an existing model: a SentencePiece one (e.g. the tokenizer of a
pretrained LM, see `tasks.gguf_vocab` for one rebuilt from a GGUF file), or a
byte-level BPE vocabulary JSON (`tasks.bpe_vocab`: SmolLM2, Llama 3, Qwen2.5,
renumbered to pad=0 and eos=1):

  vocabulary = tasks.vocab.get_vocabulary("/path/to/spm.model")
  vocabulary = tasks.vocab.get_vocabulary("/path/to/vocabulary.json")

or train one on the item corpora and prompt strings of a preprocessing output:

  python -m tasks.vocab --data_dir=OUTPUT_DIR --output=vocab/calrec.model \
      --vocab_size=8192

Paths may be local or any filesystem of `tf.io.gfile` (e.g. gs://).

The prompt's token sequence is built from separately tokenized pieces (see
`PromptLayout` and `tasks.preprocessors`): strings that concatenate to the
prompt exactly, each history item carrying its leading space, so that every
boundary falls after a "." before a separator, or at the "\n" that starts
each next-item prefix: before it (`NEWLINE_FIRST`, the item piece ends with
its ".") or after it (`NEWLINE_LAST`, the item piece ends with the "\n").
A vocabulary with no piece across such a boundary tokenizes the prompt as
the concatenation of its pieces, whatever the item texts:
`check_prompt_additivity` verifies that on the model's pieces and on a probe
history. Models trained here pass it with NEWLINE_FIRST (they split on
whitespace and normalise "\n" to a space); so does Gemma 3's (no dummy
prefix, "\n" kept: its only piece with a separator after another character
is ">▁</"), and SmolLM2's byte-level BPE (its pre-tokenizer splits before
every space and newline there). Llama 3's and Qwen2.5's pre-tokenizers keep
".\n" in one pre-token and split after it: they take NEWLINE_LAST
(`prompt_layout`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from typing import Iterable, Iterator, Sequence

from absl import logging
import pyarrow as pa
import pyarrow.parquet as pq
import seqio
import sentencepiece as spm
import tensorflow as tf

from tasks import bpe_vocab
from tasks import manifest
from pipelines import templates

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


def get_vocabulary(model_path: str | os.PathLike[str],
                   extra_ids: int = 0) -> seqio.Vocabulary:
  """The seqio vocabulary of a vocabulary file.

  A ".json" path is a byte-level BPE vocabulary of `tasks.bpe_vocab`
  (renumbered to pad=0, eos=1 when it was built); any other a SentencePiece
  model, which must have pad=0 (seqio pads with 0, and the feature converter
  tells lengths by it) and eos=1 (t5x's and the trainer's default); its unk
  and BOS, if any, may have any id.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the model's pad and EOS ids are not 0 and 1, or the .json
      is not one `tasks.bpe_vocab` wrote.
  """
  model_path = os.fspath(model_path)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(
        f"Vocabulary {model_path!r} not found; train a SentencePiece model "
        "with `python -m tasks.vocab --data_dir=... --output=...`, or convert "
        "a pretrained LM's with `python -m trainer.convert`.")
  if model_path.endswith(".json"):
    return bpe_vocab.ByteLevelBPEVocabulary(model_path, extra_ids=extra_ids)
  vocabulary = seqio.SentencePieceVocabulary(model_path, extra_ids=extra_ids)
  processor = vocabulary.tokenizer
  ids = (processor.pad_id(), processor.eos_id())
  if ids != (PAD_ID, EOS_ID):
    raise ValueError(
        f"{model_path}: special ids (pad, eos) are {ids}, expected "
        f"({PAD_ID}, {EOS_ID}).")
  return vocabulary


def decoder_start_id(vocabulary: seqio.Vocabulary) -> int:
  """The first token of every decoder sequence: BOS if the vocabulary has one.

  0 otherwise (t5x's decoder-only convention, the models trained here). A
  pretrained LM saw its BOS at the start of every sequence, so the prompt
  (joint pass) and the item-alone pass start with it (docs/contracts.md).
  """
  bos = vocabulary.bos_id
  return int(bos) if bos is not None and bos > 0 else 0


# SentencePiece's byte-fallback piece of "\n".
_NEWLINE_BYTE_PIECE = "<0x0A>"


def item_stop_ids(vocabulary: seqio.Vocabulary) -> tuple[int, ...]:
  """The ids that end a sampled item text: EOS and newline-bearing pieces.

  A vocabulary that keeps "\\n" (Gemma 3's, byte-level BPE ones) ends an
  item at every piece whose text contains "\\n": SentencePiece's byte-
  fallback piece '<0x0A>' and byte-level BPE's "Ċ" pieces included. One that
  normalises "\\n" away (the vocabularies trained here: no text ever
  tokenizes to a newline piece, so a model never learns one) ends it at EOS
  only.

  Args:
    vocabulary: a seqio vocabulary; a `SentencePieceVocabulary` (one with a
      `tokenizer` of SentencePiece pieces) or a byte-level BPE one may have
      newline pieces, any other gives (EOS,).

  Returns:
    sorted ids, EOS among them.
  """
  eos_id = int(vocabulary.eos_id)
  newline = _newline_ids(vocabulary)
  if not newline.intersection(vocabulary.encode("a\nb")):
    return (eos_id,)
  return tuple(sorted(newline | {eos_id}))


def _newline_ids(vocabulary: seqio.Vocabulary) -> set[int]:
  """The ids of the pieces whose text holds a newline."""
  if isinstance(vocabulary, bpe_vocab.ByteLevelBPEVocabulary):
    return {index for index in
            range(vocabulary.vocab_size - vocabulary.extra_ids)
            if b"\n" in vocabulary.id_bytes(index)}
  processor = getattr(vocabulary, "tokenizer", None)
  if not hasattr(processor, "id_to_piece"):
    return set()
  return {index for index in range(processor.get_piece_size())
          if "\n" in processor.id_to_piece(index) or
          processor.id_to_piece(index) == _NEWLINE_BYTE_PIECE}


# Prompt pieces (section 3.2) are split where the prompt string has a "."
# followed by a separator (" " before an item text and before the first-item
# prefix), and at the "\n" between an item text and the next-item prefix:
# before it (`NEWLINE_FIRST`) or after it (`NEWLINE_LAST`).
ITEM_SEPARATOR = " "


def first_item_prefix_piece() -> str:
  """The first-item prefix with its leading separator."""
  return ITEM_SEPARATOR + templates.FIRST_ITEM_PREFIX


@dataclasses.dataclass(frozen=True)
class PromptLayout:
  """Where the "\\n" before each next-item prefix goes among the pieces.

  Attributes:
    name: the layout's name in messages.
    item_suffix: "" when the "\\n" starts the next-item prefix's piece (the
      item pieces end with the item's "."), "\\n" when it ends each item's
      piece. A target item is spelt as the prompt holds its history items
      (`item_piece`), so under `NEWLINE_LAST` it ends with its "\\n" (which
      ends a sampled item as EOS does, `item_stop_ids`).
  """

  name: str
  item_suffix: str

  @property
  def next_item_piece(self) -> str:
    """The next-item prefix as its piece spells it."""
    return templates.NEXT_ITEM_PREFIX[len(self.item_suffix):]

  def item_piece(self, text: str) -> str:
    """An item text as the prompt holds it (leading separator, the suffix),
    and the spelling of the target the model continues the prompt with."""
    return ITEM_SEPARATOR + text + self.item_suffix

  def pieces(self, history_item_texts: Sequence[str]) -> list[str]:
    """Strings that concatenate to `templates.user_prompt` exactly.

    User prefix, " " + first-item prefix, the first item's piece, then the
    next-item prefix's piece and the item's piece per further item, and the
    trailing next-item prefix's piece.
    """
    pieces = [templates.USER_PREFIX, first_item_prefix_piece()]
    for position, text in enumerate(history_item_texts):
      if position:
        pieces.append(self.next_item_piece)
      pieces.append(self.item_piece(text))
    pieces.append(self.next_item_piece)
    return pieces

  def boundaries(self) -> set[str]:
    """The two characters around every piece boundary: the "." ending the
    user prefix and each item prefix before a separator, and an item piece's
    last character (its "." or its suffix) before the next-item prefix's
    piece (`templates.format_item`: item texts end with ".")."""
    item_end = (self.item_suffix or
                templates.format_item(templates.ItemAttributes()))[-1]
    return {templates.USER_PREFIX[-1] + ITEM_SEPARATOR,
            templates.FIRST_ITEM_PREFIX[-1] + ITEM_SEPARATOR,
            templates.NEXT_ITEM_PREFIX[-1] + ITEM_SEPARATOR,
            item_end + self.next_item_piece[0]}


# The paper's prompt (section 3.2) split before each "\n": the layout of
# every vocabulary whose pieces allow it (trained here, Gemma 3, SmolLM2).
NEWLINE_FIRST = PromptLayout("newline first", "")
# Split after each "\n": for pre-tokenizers that keep ".\n" together
# (Llama 3's, Qwen2.5's).
NEWLINE_LAST = PromptLayout("newline last", "\n")


def prompt_layout(vocabulary: seqio.Vocabulary) -> PromptLayout:
  """The layout of the vocabulary's prompts: `NEWLINE_FIRST`, or
  `NEWLINE_LAST` for a byte-level BPE vocabulary whose pre-tokenizer spans a
  boundary of NEWLINE_FIRST (keeps ".\\n" in one pre-token) but none of its
  own. Cheap: called for every prompt. `check_prompt_additivity` checks the
  chosen layout on the vocabulary's pieces and a probe."""
  if (isinstance(vocabulary, bpe_vocab.ByteLevelBPEVocabulary) and
      _pre_tokens_across(vocabulary, NEWLINE_FIRST) and
      not _pre_tokens_across(vocabulary, NEWLINE_LAST)):
    return NEWLINE_LAST
  return NEWLINE_FIRST


def _boundary_pairs(layout: PromptLayout) -> set[str]:
  """The layout's boundaries as SentencePiece pieces spell them: a space as
  "\u2581", a newline as itself or (e.g. nmt_nfkc) as a space."""
  spellings = {" ": ("\u2581",), "\n": ("\n", "\u2581")}
  return {pair[0] + spelled for pair in layout.boundaries()
          for spelled in spellings.get(pair[1], (pair[1],))}


def _pre_tokens_across(vocabulary: bpe_vocab.ByteLevelBPEVocabulary,
                       layout: PromptLayout) -> list[str]:
  """The pre-tokens that span one of the layout's boundaries, each boundary
  between two letters."""
  return [pre_token for pair in sorted(layout.boundaries())
          for pre_token in vocabulary.pre_tokens(f"a{pair}a")
          if pair in pre_token]


def pieces_across_boundaries(vocabulary: seqio.Vocabulary,
                             layout: PromptLayout) -> list[str]:
  """The model's pieces that span a boundary of the layout (should be none).

  A piece holding the two characters around a boundary (e.g. a "." then a
  space) could merge tokens of neighbouring prompt pieces. With none, a BPE
  or unigram model tokenizes the prompt as the concatenation of its pieces
  whenever its normalizer maps characters one by one (identity); nmt_nfkc's
  whitespace handling and dummy prefix are covered by the probe of
  `check_prompt_additivity`. Only pieces that text can produce (normal and
  user-defined) are scanned, of SentencePiece vocabularies. A byte-level BPE
  vocabulary merges within pre-tokens only: its pre-tokens of each boundary
  between two letters are given where one spans it (Llama 3's and Qwen2's
  splits keep ".\\n" together, so span NEWLINE_FIRST's boundary before the
  "\\n"; SmolLM2's do not). Other vocabularies give [].
  """
  if isinstance(vocabulary, bpe_vocab.ByteLevelBPEVocabulary):
    return _pre_tokens_across(vocabulary, layout)
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return []
  processor = vocabulary.tokenizer
  pairs = _boundary_pairs(layout)
  found = []
  for i in range(processor.get_piece_size()):
    if (processor.is_control(i) or processor.is_unknown(i) or
        processor.is_byte(i) or processor.is_unused(i)):
      continue
    piece = processor.id_to_piece(i)
    if any(pair in piece for pair in pairs):
      found.append(piece)
  return found


def check_prompt_additivity(vocabulary: seqio.Vocabulary,
                            history_item_texts: Sequence[str]) -> None:
  """Raises ValueError unless the prompt tokenizes piece by piece.

  Budget truncation (`tasks.preprocessors`) counts and concatenates the tokens
  of the prompt's pieces in the vocabulary's layout (`prompt_layout`); this
  check makes sure that equals tokenizing the whole prompt string: no piece
  of the model spans a boundary of the layout (`pieces_across_boundaries`),
  and the probe history tokenizes alike both ways.
  """
  layout = prompt_layout(vocabulary)
  across = pieces_across_boundaries(vocabulary, layout)
  whole = vocabulary.encode(templates.user_prompt(history_item_texts))
  by_piece = [token for piece in layout.pieces(history_item_texts)
              for token in vocabulary.encode(piece)]
  if across or list(whole) != by_piece:
    found = (f" (pieces across a boundary: {across[:5]!r})" if across
             else "")
    raise ValueError(
        "This vocabulary tokenizes the prompt differently from the "
        "concatenation of its pieces (user prefix, item prefixes, item "
        f"texts; layout {layout.name!r}){found}, so input-budget truncation "
        "could not be exact. Use a SentencePiece model with no piece holding "
        "a '.' followed by a space or newline (e.g. one trained by `python "
        "-m tasks.vocab`, or Gemma 3's), or a byte-level BPE one whose "
        "pre-tokenizer splits before or after each newline (SmolLM2's, "
        "Llama 3's, Qwen2.5's).")


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
