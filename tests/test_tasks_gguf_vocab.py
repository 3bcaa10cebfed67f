"""The SentencePiece model rebuilt from a GGUF file's tokenizer metadata."""

import random

import gemma_testdata
import numpy as np
import pytest
import sentencepiece as spm

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


def _varied_strings(rng, count):
  """Digits, accents, scripts, emoji, entities, whitespace runs, edges."""
  words = ["Gift", "card", "Amazon.com", "$25.00", "1234567890", "naïve",
           "Crème brûlée", "東京", "Привет", "مرحبا", "नमस्ते", "🎁", "👍🏽",
           "👨‍👩‍👧", "&amp;", "&#39;", "&nbsp;", "<b>", "</td>", "™", "®",
           "½", "x²", "e-mail", "don't", "U.S.A.", "3.5\"", "50%", "#1",
           "C++", "~", "\t", "\u00a0", "\u200b", "ﬁ", "Ｆｕｌｌ", "Ⅻ"]
  seps = [" ", "  ", "   ", "\n", "\n\n", " \n ", "\t", "", ". ", ", "]
  strings = []
  for _ in range(count):
    parts = [rng.choice(words) + rng.choice(seps)
             for _ in range(rng.randint(1, 12))]
    text = "".join(parts)
    if rng.random() < 0.3:
      text = " " * rng.randint(1, 3) + text
    if rng.random() < 0.3:
      text = text.rstrip() + rng.choice([" ", "  ", "\n", " \n"])
    strings.append(text)
  return strings


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
  strings = _varied_strings(random.Random(0), 300) + [
      "", " ", "\n", "  lead", "trail  ", "a\u00a0b", "\x01\x7f"]
  for text in strings:
    assert gemma.decode(gemma.encode(text)) == text


@pytest.mark.slow
def test_gemma_ids_equal_transformers(gemma):
  transformers = pytest.importorskip("transformers")
  path = gemma_testdata.gguf_path()
  reference = transformers.AutoTokenizer.from_pretrained(
      str(path.parent), gguf_file=path.name)
  strings = _varied_strings(random.Random(1), 700)
  try:
    strings += _gift_cards_strings()
  except pytest.skip.Exception:
    pass  # no real data: the generated strings alone
  assert len(strings) >= 700
  equal = [reference.encode(text, add_special_tokens=False) ==
           gemma.encode(text) for text in strings]
  print(f"Gemma ids equal to transformers' on {sum(equal)} of "
        f"{len(strings)} strings")
  assert [s for s, same in zip(strings, equal) if not same] == []
