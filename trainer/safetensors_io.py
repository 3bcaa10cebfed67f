"""safetensors files and transformers checkpoint directories, read and
written with NumPy (no torch, no safetensors package): single files, or
shards named by model.safetensors.index.json, beside config.json."""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Iterable, Mapping, Optional

import ml_dtypes
import numpy as np

# safetensors dtypes; numpy has no bfloat16 or float8, ml_dtypes does.
_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one .safetensors file (memory-mapped, read-only)."""
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
  header.pop("__metadata__", None)
  start = 8 + header_size
  data = (np.memmap(path, np.uint8, mode="r", offset=start)
          if os.path.getsize(path) > start else np.zeros(0, np.uint8))
  tensors = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype "
                       f"{info['dtype']}.")
    begin, end = info["data_offsets"]
    tensors[name] = data[begin:end].view(_DTYPES[info["dtype"]]).reshape(
        info["shape"])
  return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes tensors (name order) as one .safetensors file."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  arrays, offset = [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype not in _DTYPE_NAMES:
      raise ValueError(f"Tensor {name} has dtype {array.dtype}, which "
                       "safetensors cannot store.")
    header[name] = {"dtype": _DTYPE_NAMES[array.dtype],
                    "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    arrays.append(array)
    offset += array.nbytes
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for array in arrays:
      f.write(array.tobytes())


def read_safetensors_dir(
    path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json dict, tensors) of a transformers checkpoint directory.

  Reads model.safetensors, or the shards that model.safetensors.index.json
  names. Tensors keep their stored dtype.

  Raises:
    FileNotFoundError: no config.json, or neither weights file.
    ValueError: an index naming a tensor that its shard lacks.
  """
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"No config.json in {path}: not a transformers "
                            "checkpoint directory.")
  with open(config_path) as f:
    hf_config = json.load(f)
  index_path = os.path.join(path, _INDEX)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(path, shard)
      if not os.path.isfile(shard_path):
        raise FileNotFoundError(f"{_INDEX} in {path} names {shard}, which is "
                                "missing.")
      tensors.update(read_safetensors(shard_path))
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
      raise ValueError(f"{_INDEX} in {path} lists tensors its shards lack: "
                       f"{', '.join(absent[:5])}.")
    return hf_config, tensors
  single = os.path.join(path, _SINGLE)
  if not os.path.isfile(single):
    raise FileNotFoundError(f"Neither {_SINGLE} nor {_INDEX} in {path}.")
  return hf_config, read_safetensors(single)


def _shards(tensors: Mapping[str, np.ndarray],
            max_shard_bytes: Optional[int]) -> list[list[str]]:
  """Names grouped in order into shards of at most max_shard_bytes (a tensor
  larger than that gets a shard of its own)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name in sorted(tensors):
    nbytes = np.asarray(tensors[name]).nbytes
    if (max_shard_bytes is not None and shards[-1] and
        size + nbytes > max_shard_bytes):
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  return shards


def _remove(paths: Iterable[str]) -> None:
  for stale in paths:
    if os.path.isfile(stale):
      os.remove(stale)


def write_safetensors_dir(path: str, hf_config: Mapping[str, Any],
                          tensors: Mapping[str, np.ndarray],
                          max_shard_bytes: Optional[int] = None) -> None:
  """Writes a checkpoint directory that transformers' from_pretrained loads.

  Args:
    path: the directory (created if needed); weights files left there by an
      earlier write are replaced.
    hf_config: written as config.json.
    tensors: HF-named arrays, e.g. from `hf_weights.params_to_hf`.
    max_shard_bytes: None writes model.safetensors; otherwise shards
      model-0000i-of-0000n.safetensors of at most this size (a larger tensor
      alone) with model.safetensors.index.json, even when one shard suffices.
  """
  os.makedirs(path, exist_ok=True)
  _remove([os.path.join(path, name) for name in os.listdir(path)
           if name in (_INDEX, _SINGLE) or _SHARD.fullmatch(name)])
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    f.write("\n")
  if max_shard_bytes is None:
    write_safetensors(os.path.join(path, _SINGLE), tensors)
    return
  shards = _shards(tensors, max_shard_bytes)
  weight_map = {}
  for number, names in enumerate(shards, start=1):
    shard = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(os.path.join(path, shard),
                      {name: tensors[name] for name in names})
    weight_map.update({name: shard for name in names})
  total = sum(np.asarray(array).nbytes for array in tensors.values())
  with open(os.path.join(path, _INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              f, indent=2, sort_keys=True)
    f.write("\n")
