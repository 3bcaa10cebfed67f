"""The settings of a training run: `train_config.TrainConfig`, which
`train_loop.train` builds once from its gin-bound parameters."""

import dataclasses
import inspect

import gin
import pytest

from trainer import models
from trainer import network
from trainer import train
from trainer import train_config
from trainer import train_inputs
from trainer import train_loop

LENGTHS = {"inputs": 32, "targets": 8}
REQUIRED = dict(model_dir="run", mixture_or_task_name="task",
                task_feature_lengths=LENGTHS, train_steps=10, batch_size=4)
# The parameters of `train` that are objects the run uses, not settings.
OBJECTS = {"model", "optimizer", "partitioner", "feature_converter_cls",
           "register_tasks"}


def _config(**kwargs) -> train_config.TrainConfig:
  return train_config.TrainConfig(**{**REQUIRED, **kwargs})


def _model() -> models.CALRecModel:
  return models.CALRecModel(network.TransformerConfig(
      vocab_size=512, emb_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
      mlp_dim=64, num_layers=1))


class _Stop(Exception):
  """Stops `train` where the test has seen what it needs."""


def test_defaults_and_derived_settings():
  config = _config()
  assert (config.random_seed, config.checkpoint_period, config.log_period,
          config.best_metric, config.best_mode) == (
              0, 1000, 100, "validation/loss", "min")
  assert config.validates and config.validation_name == "task"
  assert config.checkpoint_metric == "validation/loss"
  config = _config(validation_mixture_or_task_name="other",
                   validation_batches=0)
  assert not config.validates and config.validation_name == "other"
  assert config.checkpoint_metric is None


def test_config_is_frozen_with_read_only_feature_lengths():
  lengths = dict(LENGTHS)
  config = _config(task_feature_lengths=lengths)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.batch_size = 8  # pytype: disable=not-writable
  with pytest.raises(TypeError):
    config.task_feature_lengths["inputs"] = 64  # pytype: disable=unsupported-operands
  lengths["inputs"] = 64  # The caller's dict: not the config's copy.
  assert dict(config.task_feature_lengths) == LENGTHS
  assert config == _config()


def test_settings_are_keyword_only():
  with pytest.raises(TypeError):
    train_config.TrainConfig("run", "task", LENGTHS, 10, 4)  # pylint: disable=too-many-function-args


@pytest.mark.parametrize("settings, message", [
    ({"model_dir": ""}, "model_dir must be a non-empty path, got ''."),
    ({"train_steps": -1}, "train_steps must be >= 0, got -1."),
    ({"train_steps": 1e5}, "train_steps must be an integer, got 100000.0."),
    ({"batch_size": 0}, "batch_size must be positive, got 0."),
    ({"batch_size": True}, "batch_size must be an integer, got True."),
    ({"num_microbatches": 0}, "num_microbatches must be positive, got 0."),
    ({"checkpoint_period": 0}, "checkpoint_period must be positive, got 0."),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be positive, got 0."),
    ({"keep_period": 0}, "keep_period must be positive, got 0."),
    ({"log_period": -5}, "log_period must be positive, got -5."),
    ({"validation_batches": -1}, "validation_batches must be >= 0, got -1."),
    ({"random_seed": None}, "random_seed must be an integer, got None."),
    ({"best_mode": "mid"}, "best_mode must be 'min' or 'max', got 'mid'."),
    ({"best_metric": "loss"}, "best_metric must be 'validation/' + a "
     "validation summary's name (e.g. validation/loss) or None, got 'loss'."),
    ({"task_feature_lengths": {"inputs": 32}},
     "TASK_FEATURE_LENGTHS must give positive token budgets for 'inputs' and "
     "'targets', got {'inputs': 32}."),
    ({"task_feature_lengths": [32, 8]},
     "TASK_FEATURE_LENGTHS must give positive token budgets for 'inputs' and "
     "'targets', got [32, 8]."),
])
def test_a_value_out_of_range_is_refused_in_one_line(settings, message):
  with pytest.raises(ValueError) as error:
    _config(**settings)
  assert str(error.value) == message


def test_optional_settings_may_be_none():
  config = _config(keep_period=None, validation_batches=None, best_metric=None)
  assert config.checkpoint_metric is None


def test_train_takes_every_setting_with_the_config_default():
  """`train`'s gin parameters: the config's fields plus the objects."""
  parameters = inspect.signature(train_loop.train).parameters
  fields = {f.name: f for f in dataclasses.fields(train_config.TrainConfig)}
  assert set(parameters) == set(fields) | OBJECTS
  for name, field in fields.items():
    default = parameters[name].default
    if field.default is dataclasses.MISSING:
      assert default is gin.REQUIRED, name
    else:
      assert default == field.default, name


def test_a_bad_setting_fails_before_anything_is_read_or_written(tmp_path):
  model_dir = tmp_path / "run"
  registered = []
  with pytest.raises(ValueError, match="best_mode must be 'min' or 'max'"):
    train_loop.train(**{**REQUIRED, "model_dir": str(model_dir)},
                     model=_model(), best_mode="mid",
                     register_tasks=lambda: registered.append(True))
  assert not registered
  assert not model_dir.exists()


def test_train_builds_the_config_once_and_passes_it_down(monkeypatch):
  expected = _config(checkpoint_period=7)
  built, seen = [], []

  class CountedConfig(train_config.TrainConfig):

    def __post_init__(self):
      super().__post_init__()
      built.append(self)

  def register_and_check_tasks(config, model, register_tasks):
    del model, register_tasks
    seen.append(config)
    raise _Stop()

  monkeypatch.setattr(train_config, "TrainConfig", CountedConfig)
  monkeypatch.setattr(train_inputs, "register_and_check_tasks",
                      register_and_check_tasks)
  with pytest.raises(_Stop):
    train_loop.train(**REQUIRED, model=_model(), checkpoint_period=7)
  assert len(built) == 1 and seen == built
  assert all(getattr(seen[0], field.name) == getattr(expected, field.name)
             for field in dataclasses.fields(expected))


def test_the_gin_bindings_of_the_shipped_configs_reach_the_config(
    monkeypatch):
  seen = []

  def register_and_check_tasks(config, model, register_tasks):
    del model, register_tasks
    seen.append(config)
    raise _Stop()

  monkeypatch.setattr(train_inputs, "register_and_check_tasks",
                      register_and_check_tasks)
  gin.clear_config()
  try:
    train.parse_gin(
        ["trainer/configs/runs/tiny_stage1.gin"],
        ["MODEL_DIR = 'unused'", "DATA_DIR = 'unused'",
         "VOCABULARY = 'unused'", "BATCH_SIZE = 8",
         "train.checkpoint_period = 50", "train.best_mode = 'max'"])
    with pytest.raises(_Stop):
      train_loop.train()
  finally:
    gin.clear_config()
  config, = seen
  assert (config.model_dir, config.batch_size, config.train_steps,
          config.checkpoint_period, config.keep_period,
          config.validation_batches, config.log_period, config.best_mode) == (
              "unused", 8, 400, 50, 100, 4, 20, "max")
  assert dict(config.task_feature_lengths) == {"inputs": 256, "targets": 64}
  assert config.validation_name == "calrec_cds"
