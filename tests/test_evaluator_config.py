"""The evaluation's config: defaults, value checks, and `resolve`, the one
step that reads files."""

import dataclasses
import json

from apache_beam.io.filesystems import FileSystems
import pytest

from evaluator import config as config_lib
from evaluator import data
from evaluator import evaluate
from evaluator import generation
from evaluator import retrieval
from evaluator import transforms
from test_evaluator_evaluate import CATEGORY
from test_evaluator_evaluate import data_dir  # pylint: disable=unused-import

REQUIRED = {"data_dir": "data", "category": CATEGORY, "output_dir": "out"}


def test_defaults_are_those_of_generation_and_retrieval(capsys):
  config = config_lib.EvaluationConfig(**REQUIRED, model="lir")
  assert (config.num_generations, config.temperature,
          config.max_decode_length) == (generation.NUM_GENERATIONS,
                                        generation.TEMPERATURE,
                                        generation.MAX_DECODE_LENGTH)
  assert (config.num_preds, config.epsilon) == (retrieval.NUM_PREDS,
                                                retrieval.EPSILON)
  assert config.retrieval_options() == transforms.RetrievalOptions()
  # The flags' defaults are the config's, and their help shows them.
  assert evaluate.parse_flags(["--data_dir=data", f"--category={CATEGORY}",
                               "--output_dir=out", "--model=lir"]) == (
                                   config, [])
  with pytest.raises(SystemExit):
    evaluate.parse_flags(["--help"])
  assert (f"N_gen samples per user (default: {generation.NUM_GENERATIONS})"
          in " ".join(capsys.readouterr().out.split()))


@pytest.mark.parametrize("setting, message", [
    ({"split": "train"}, "--split must be one of test, validation, got "
     "'train'."),
    ({"model": "bert"}, "--model must be one of calrec, lir, got 'bert'."),
    ({"retrieval": "dense"}, "--retrieval must be one of bm25, hierarchical"),
    ({"bm25_backend": "slow"}, "--bm25_backend must be one of fast, lucene"),
    ({"dtype": "float16"}, "--dtype must be one of float32, bfloat16, got "
     "'float16'."),
    ({"num_generations": 0}, "--num_generations must be an integer >= 1, "
     "got 0."),
    ({"max_decode_length": 0}, "--max_decode_length must be an integer >= 1"),
    ({"num_preds": -1}, "--num_preds must be an integer >= 1, got -1."),
    ({"max_users": 0}, "--max_users must be an integer >= 1"),
    ({"batch_size": 0}, "--batch_size must be an integer >= 1"),
    ({"temperature": -0.5}, "--temperature must be >= 0, got -0.5."),
    ({"epsilon": -1e-4}, "--epsilon must be >= 0"),
    ({"recommendations_k": -1}, "--recommendations_k must be >= 0, got -1."),
    ({"model": "calrec"}, "--model=calrec needs --model_dir (or use "
     "--model=lir)."),
])
def test_a_value_out_of_range_names_its_flag(setting, message):
  with pytest.raises(ValueError) as error:
    config_lib.EvaluationConfig(**{**REQUIRED, "model": "lir", **setting})
  assert str(error.value).startswith(message)
  # A config derived from a valid one is checked as well.
  valid = config_lib.EvaluationConfig(**REQUIRED, model_dir="model")
  with pytest.raises(ValueError) as error:
    dataclasses.replace(valid, **{"model_dir": None, **setting})
  assert str(error.value).startswith(message)


def test_a_bad_value_is_a_usage_error_naming_its_flag(capsys):
  with pytest.raises(SystemExit):
    evaluate.parse_flags(["--data_dir=data", f"--category={CATEGORY}",
                          "--output_dir=out", "--model=lir",
                          "--temperature=-1"])
  assert capsys.readouterr().err.splitlines()[-1] == (
      "python -m evaluator.evaluate: error: --temperature must be >= 0, got "
      "-1.0.")


def _no_file_access(*args, **kwargs):
  raise AssertionError(f"file access while parsing: {args}")


def test_parsing_reads_no_file_and_resolve_checks_them(tmp_path,
                                                       monkeypatch):
  flags = [f"--data_dir={tmp_path / 'missing'}", f"--category={CATEGORY}",
           f"--output_dir={tmp_path / 'out'}",
           f"--model_dir={tmp_path / 'no_model'}", "--runner=FnApiRunner"]
  with monkeypatch.context() as patched:
    for name in ("exists", "match", "open", "create", "mkdirs"):
      patched.setattr(FileSystems, name, _no_file_access)
    config, beam_argv = evaluate.parse_flags(flags)
  assert config.data_dir == str(tmp_path / "missing")
  assert beam_argv == ["--runner=FnApiRunner"]
  with pytest.raises(data.DataError, match="has no manifest.json"):
    config_lib.resolve(config)
  assert not list(tmp_path.iterdir())


def test_resolve_returns_what_it_found(data_dir, tmp_path):
  lir = config_lib.EvaluationConfig(str(data_dir), CATEGORY,
                                    str(tmp_path / "lir"), model="lir")
  resolved = config_lib.resolve(lir)
  assert resolved.config is lir and resolved.params_fingerprint is None
  assert resolved.split_files == data.split_files(str(data_dir), CATEGORY,
                                                  "test")
  # CALRec: the step every worker loads, found once (here the latest).
  model_dir = tmp_path / "model"
  for step in (100, 200):
    (model_dir / "checkpoints" / str(step) / "params").mkdir(parents=True)
  (model_dir / "model.json").write_text("{}")
  calrec = dataclasses.replace(lir, model="calrec", model_dir=str(model_dir))
  resolved = config_lib.resolve(calrec)
  assert resolved.config == dataclasses.replace(calrec, checkpoint_step=200)
  assert calrec.checkpoint_step is None
  assert resolved.params_fingerprint
  assert resolved.settings()["checkpoint_step"] == 200
  # --dtype is recorded when given, so a run without it reads as before.
  assert "dtype" not in resolved.settings()
  bfloat16 = config_lib.resolve(dataclasses.replace(calrec, dtype="bfloat16"))
  assert bfloat16.settings() == {**resolved.settings(), "dtype": "bfloat16"}


def test_generation_memory_sets_the_users_per_batch(data_dir, tmp_path,
                                                   capsys):
  from trainer import network  # pylint: disable=g-import-not-at-top
  from trainer import sampling_memory  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "model"
  (model_dir / "checkpoints" / "5" / "params").mkdir(parents=True)
  config = network.TransformerConfig(vocab_size=4096, num_layers=3)
  (model_dir / "model.json").write_text(json.dumps({
      "network": dataclasses.asdict(config),
      "task_feature_lengths": {"inputs": 99, "targets": 16}}))
  calrec = config_lib.EvaluationConfig(
      str(data_dir), CATEGORY, str(tmp_path / "out"), model_dir=str(model_dir),
      num_generations=8, max_decode_length=20, generation_memory_gib=0.25)
  # Prompts of the run's 99 tokens and the start token.
  user_bytes = sampling_memory.sampling_bytes(config, 100, 8, 20)
  resolved = config_lib.resolve(calrec)
  assert resolved.config.batch_size == 2**28 // user_bytes > 1
  assert resolved.settings()["generation_memory_gib"] == 0.25
  assert resolved.settings()["batch_size"] == resolved.config.batch_size
  # In bfloat16 the caches and activations take half: more users fit.
  assert config_lib.resolve(dataclasses.replace(
      calrec, dtype="bfloat16")).config.batch_size > resolved.config.batch_size
  with pytest.raises(ValueError, match="GiB holds no prompt of .* MiB to "
                     "sample .prompt length 100, 8 samples of up to 20"):
    config_lib.resolve(dataclasses.replace(calrec,
                                           generation_memory_gib=1e-6))
  # The flags: one of the two batch sizes, a positive budget, CALRec only.
  flags = ["--data_dir=data", f"--category={CATEGORY}", "--output_dir=out"]
  assert evaluate.parse_flags(
      [*flags, "--model_dir=model", "--generation_memory_gib=2"])[
          0].generation_memory_gib == 2
  for bad, error in (
      (["--model_dir=model", "--generation_memory_gib=2", "--batch_size=4"],
       "not allowed with argument"),
      (["--model_dir=model", "--generation_memory_gib=0"],
       "--generation_memory_gib must be > 0, got 0.0."),
      (["--model=lir", "--generation_memory_gib=2"],
       "--generation_memory_gib sizes the batches of --model=calrec")):
    with pytest.raises(SystemExit):
      evaluate.parse_flags([*flags, *bad])
    assert error in capsys.readouterr().err
