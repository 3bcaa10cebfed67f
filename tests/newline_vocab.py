"""A hand-made SentencePiece vocabulary with newline pieces, like Gemma 3's.

Pad 0, EOS 1, unk 2, the 256 byte-fallback pieces ('<0x0A>' among them),
then pieces holding "\\n" ("\\n", ".\\n", "\\n\\n") and a few for item texts;
the identity normalizer keeps "\\n" (no dummy prefix), so texts tokenize to
newline pieces as a pretrained LM's vocabulary does.
"""

from __future__ import annotations

import os

import seqio
from sentencepiece import sentencepiece_model_pb2

NEWLINE_PIECES = ("\n", ".\n", "\n\n")
_OTHER_PIECES = ("▁", ".", ":", "T", "i", "t", "l", "e", "P", "r", "c", "1",
                 "0", "a", "b", "Ti", "Title", "▁Price", "Price", "ic", "it")


def newline_vocabulary(path: str | os.PathLike[str]
                      ) -> seqio.SentencePieceVocabulary:
  """Writes the vocabulary's model to `path` and loads it."""
  model = sentencepiece_model_pb2.ModelProto()
  piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
  model.pieces.add(piece="<pad>", type=piece_type.CONTROL)
  model.pieces.add(piece="</s>", type=piece_type.CONTROL)
  model.pieces.add(piece="<unk>", type=piece_type.UNKNOWN)
  for byte in range(256):
    model.pieces.add(piece=f"<0x{byte:02X}>", type=piece_type.BYTE)
  for rank, piece in enumerate(NEWLINE_PIECES + _OTHER_PIECES):
    model.pieces.add(piece=piece, score=-float(rank),
                     type=piece_type.NORMAL)
  trainer = model.trainer_spec
  trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
  trainer.vocab_size = len(model.pieces)
  trainer.byte_fallback = True
  trainer.pad_id, trainer.eos_id, trainer.unk_id, trainer.bos_id = 0, 1, 2, -1
  normalizer = model.normalizer_spec
  normalizer.name = "identity"
  normalizer.add_dummy_prefix = False
  normalizer.remove_extra_whitespaces = False
  normalizer.escape_whitespaces = True
  with open(path, "wb") as f:
    f.write(model.SerializeToString())
  return seqio.SentencePieceVocabulary(os.fspath(path))
