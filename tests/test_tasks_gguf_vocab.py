"""The SentencePiece model rebuilt from a GGUF file's tokenizer metadata."""

import random

import gemma_testdata
import gguf_golden
import numpy as np
import pytest
import sentencepiece as spm
import tokenizer_strings

from tasks import gguf_vocab
from pipelines import templates
from tasks import vocab

gguf = pytest.importorskip("gguf")

_SPACE = "\u2581"


def _write_gguf(path, tokenizer_model, tokens, **extra):
  """A metadata-only GGUF file with this tokenizer."""
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model(tokenizer_model)
  writer.add_token_list(tokens)
  for key, value in extra.items():
    getattr(writer, f"add_{key}")(value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _tiny_llama_gguf(path, **extra):
  bytes_ = [f"<0x{b:02X}>" for b in range(256)]
  tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "  ", "\n", *bytes_,
            f"{_SPACE}a", "ab", f"{_SPACE}ab"]
  types = [3, 3, 3, 3, 4, 4, *[6] * 256, 1, 1, 1]
  scores = [0.0] * 262 + [-1.0, -2.0, -3.0]
  return _write_gguf(
      path, "llama", tokens, token_types=types, token_scores=scores,
      pad_token_id=0, eos_token_id=1, bos_token_id=2, unk_token_id=3,
      add_space_prefix=False, **extra)


def test_tiny_llama_vocabulary(tmp_path):
  proto = gguf_vocab.sentencepiece_model_from_gguf(
      _tiny_llama_gguf(tmp_path / "tiny.gguf"))
  processor = spm.SentencePieceProcessor(model_proto=proto)
  assert (processor.pad_id(), processor.eos_id(), processor.bos_id(),
          processor.unk_id()) == (0, 1, 2, 3)
  # The whitespace-run piece is spelled with one "▁" per space.
  assert processor.id_to_piece(4) == _SPACE * 2
  assert processor.encode("  ab ab\n") == [4, 263, 264, 5]
  # Byte fallback for what the pieces lack; no dummy prefix.
  assert processor.encode("b") == [6 + ord("b")]
  # (A lone space would fall back to the bytes of "▁": this tiny vocabulary
  # has no "▁" piece, Gemma's has.)
  for text in ("ab  ab\n\nb", "é🎁", " ab"):
    assert processor.decode(processor.encode(text)) == text


def test_metadata_reader_reads_what_gguf_writes(tmp_path):
  metadata = gguf_vocab.read_gguf_metadata(
      _tiny_llama_gguf(tmp_path / "tiny.gguf"))
  assert metadata["general.architecture"] == "llama"
  assert metadata["tokenizer.ggml.tokens"][:2] == ["<pad>", "<eos>"]
  assert metadata["tokenizer.ggml.bos_token_id"] == 2
  assert metadata["tokenizer.ggml.add_space_prefix"] is False
  np.testing.assert_array_equal(metadata["tokenizer.ggml.scores"][-3:],
                                [-1.0, -2.0, -3.0])


def test_byte_level_bpe_is_not_a_sentencepiece_model(tmp_path):
  path = _write_gguf(tmp_path / "smol.gguf", "gpt2", ["a", "b", "ab"],
                     token_merges=["a b"])
  with pytest.raises(ValueError, match=r"'gpt2' is not a SentencePiece "
                     r"vocabulary; supported here: 'llama' .* read by "
                     r"tasks.bpe_vocab") as error:
    gguf_vocab.sentencepiece_model_from_gguf(path)
  assert "\n" not in str(error.value)


def test_not_a_gguf_file(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(b"NOPE" + bytes(20))
  with pytest.raises(ValueError, match="not a little-endian GGUF"):
    gguf_vocab.read_gguf_metadata(path)


@pytest.fixture(scope="module")
def gemma():
  return gemma_testdata.vocabulary()


def test_gemma_special_ids_and_start_token(gemma):
  processor = gemma.tokenizer
  assert processor.get_piece_size() == 262_144
  assert (gemma.pad_id, gemma.eos_id, gemma.bos_id, gemma.unk_id) == (
      0, 1, 2, 3)
  assert vocab.decoder_start_id(gemma) == 2
  assert processor.encode("a\n\n  b") == [
      processor.piece_to_id("a"), processor.piece_to_id("\n\n"),
      processor.piece_to_id(_SPACE * 2), processor.piece_to_id("b")]


def _gift_cards_strings():
  """Real titles, descriptions and features, item texts and prompts."""
  strings = []
  for row in gemma_testdata.gift_cards_meta_rows()[:400]:
    strings += [row.get("title") or ""]
    strings += (row.get("description") or [])[:1]
    strings += (row.get("feature") or [])[:1]
  sequences = gemma_testdata.gift_cards_sequences()
  strings += sorted({text for texts in sequences for text in texts})[:400]
  strings += [templates.user_prompt(texts[:-1]) for texts in sequences[:150]]
  return [s for s in strings if s]


def test_gemma_round_trip(gemma):
  strings = tokenizer_strings.varied_strings(random.Random(0), 300) + [
      "", " ", "\n", "  lead", "trail  ", "a\u00a0b", "\x01\x7f"]
  for text in strings:
    assert gemma.decode(gemma.encode(text)) == text


def test_gemma_ids_equal_transformers_golden(gemma):
  golden = tokenizer_strings.read_ids_golden(
      tokenizer_strings.GEMMA_IDS_GOLDEN, "gemma")
  strings = tokenizer_strings.gemma_strings()
  assert len(strings) >= 1000
  assert gguf_golden.file_sha256(gemma_testdata.gguf_path()) == (
      golden.gguf_sha256), (
          f"the Gemma GGUF is not the golden's; regenerate with "
          f"{gguf_golden.SCRIPT}")
  mismatch = tokenizer_strings.first_mismatch(
      strings, [gemma.encode(s) for s in strings], golden, gguf_golden.SCRIPT)
  assert mismatch is None, mismatch


@pytest.mark.slow
@pytest.mark.live
def test_gemma_ids_equal_transformers(gemma):
  """transformers' tokenizer now: the golden file's ids, ours on the golden
  strings and the real Gift_Cards texts (when present)."""
  pytest.importorskip("transformers")
  reference = tokenizer_strings.transformers_tokenizer(
      gemma_testdata.gguf_path())
  strings = tokenizer_strings.gemma_strings()
  golden = tokenizer_strings.read_ids_golden(
      tokenizer_strings.GEMMA_IDS_GOLDEN, "gemma")
  stale = tokenizer_strings.first_mismatch(
      strings, tokenizer_strings.transformers_ids(reference, strings),
      golden, gguf_golden.SCRIPT)
  assert stale is None, f"stale golden file: {stale}"
  try:
    strings += _gift_cards_strings()
  except pytest.skip.Exception:
    pass  # no real data: the generated strings alone
  equal = [reference.encode(text, add_special_tokens=False) ==
           gemma.encode(text) for text in strings]
  print(f"Gemma ids equal to transformers' on {sum(equal)} of "
        f"{len(strings)} strings")
  assert [s for s, same in zip(strings, equal) if not same] == []
