"""The training loop end to end on a tiny in-memory seqio task."""

import dataclasses
import logging
import pathlib
import re
import shutil
import subprocess
import sys

from clu import metric_writers
from etils import epath
import gin
import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest
import seqio
import tasks_testdata
import tensorflow as tf

from experiments import curves
from trainer import checkpoints
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import train
from trainer import train_lib
from trainer import train_inputs
from trainer import train_loop
from trainer import train_metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TASK = "trainer_test_task"
STATEFUL_TASK = "trainer_test_stateful_task"
LENGTHS = {"inputs": 32, "targets": 32}
TINY_STAGE1 = "trainer/configs/runs/tiny_stage1.gin"
# Short prompts: they must stay distinct within the 32-token input budget.
PROMPTS = [
    "Title: Red Wire. Category: Tools.",
    "Title: Steel Nail Kit. Category: Tools.",
    "Title: Blue Paper. Category: Tools.",
    "Title: Clear Sealant. Category: Tools.",
]
TARGETS = [
    "Title: Pro Flex. Brand: Geocel.",
    "Title: Brad Assortment. Brand: Hillman.",
    "Title: Large Pack. Brand: Trimaco.",
    "Title: Small Kit. Brand: Unknown.",
]


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
  """Runs of the same program compile once in this module."""
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def vocabulary_path(tmp_path_factory):
  return tasks_testdata.train_test_vocabulary(
      tmp_path_factory.mktemp("vocab") / "test.model")


def _examples(split, shuffle_files, seed=None):
  """The seqio dataset_fn of the test tasks: the same examples in any split."""
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"inputs": PROMPTS,
                                             "targets": TARGETS})


@pytest.fixture(scope="module", autouse=True)
def task(vocabulary_path):

  def stateful_shuffle_of_targets(dataset):
    # Stateful randomness: tf.data cannot checkpoint it.
    return dataset.map(lambda ex: {**ex, "targets": tf.random.shuffle(
        ex["targets"])})

  tasks_testdata.register_in_memory_task(TASK, _examples, vocabulary_path)
  tasks_testdata.register_in_memory_task(
      STATEFUL_TASK, _examples, vocabulary_path,
      preprocessors_after_tokenize=[stateful_shuffle_of_targets])
  yield
  seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.remove(STATEFUL_TASK)


def _model(**kwargs):
  config = network.TransformerConfig(vocab_size=512, emb_dim=64, num_heads=4,
                                     num_kv_heads=1, head_dim=16, mlp_dim=128,
                                     num_layers=1)
  return models.CALRecModel(config, **kwargs)


def _train(model_dir, train_steps, learning_rate=3e-3, **kwargs):
  arguments = dict(
      model=_model(), model_dir=str(model_dir), mixture_or_task_name=TASK,
      task_feature_lengths=LENGTHS, train_steps=train_steps, batch_size=4,
      random_seed=3, checkpoint_period=3, keep_checkpoints=2,
      validation_batches=1, log_period=3,
      optimizer=train_lib.create_optimizer(learning_rate))
  arguments.update(kwargs)
  return train_loop.train(**arguments)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("straight")
  return model_dir, _train(model_dir, train_steps=6)


@pytest.mark.slow
def test_kill_and_resume_equals_straight_run(straight_run, tmp_path):
  _, straight = straight_run
  halfway = _train(tmp_path, train_steps=3)
  assert int(halfway.step) == 3
  resumed = _train(tmp_path, train_steps=6)
  assert int(resumed.step) == 6
  _assert_trees_equal(resumed.params, straight.params)
  _assert_trees_equal(resumed.opt_state, straight.opt_state)


def _training_batches():
  """The training input of `_train`, read the way `train_loop.train` does."""
  return train_inputs._dataset(  # pylint: disable=protected-access
      TASK, LENGTHS, train_inputs.default_feature_converter_cls()(pack=False),
      "train", shuffle=True, seed=3, num_epochs=None, batch_size=4,
      shard_info=seqio.ShardInfo(0, 1)).as_numpy_iterator()


@pytest.mark.slow
def test_checkpoint_holds_the_input_state_of_its_step(straight_run):
  """Restoring the saved state gives the next batch without replaying."""
  model_dir, _ = straight_run
  batches = _training_batches()
  straight = [next(batches) for _ in range(4)]
  restored = _training_batches()
  checkpoints.DatasetIteratorHandler().restore(
      epath.Path(model_dir / "checkpoints" / "3" / "dataset"),
      checkpoints.DatasetIteratorRestore(restored))
  batch = next(restored)
  # The test data repeats 4 examples, so make sure batch 4 is not batch 1.
  assert any(np.any(straight[0][k] != straight[3][k]) for k in batch)
  for k in batch:
    np.testing.assert_array_equal(batch[k], straight[3][k], err_msg=k)


@pytest.mark.slow
def test_resume_without_input_state_fails_clearly(straight_run, tmp_path):
  model_dir, _ = straight_run
  shutil.copytree(model_dir, tmp_path, dirs_exist_ok=True)
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  shutil.rmtree(tmp_path / "checkpoints" / "3" / "dataset")
  with pytest.raises(FileNotFoundError, match="holds no input state"):
    _train(tmp_path, train_steps=6)


@pytest.mark.slow
def test_uncheckpointable_input_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="cannot be checkpointed.*stateful"):
    _train(tmp_path, train_steps=3, mixture_or_task_name=STATEFUL_TASK)
  assert checkpoints.CheckpointManager(tmp_path).all_steps() == []


def test_padded_batches_pad_the_last_batch_and_stop():
  examples = [{"x": np.full(2, i)} for i in range(1, 6)]
  padding = {"x": np.zeros(2, np.int64)}
  batches = list(train_inputs._padded_batches(  # pylint: disable=protected-access
      iter(examples), padding, 2, None))
  assert [b["x"][:, 0].tolist() for b in batches] == [[1, 2], [3, 4], [5, 0]]
  assert len(list(train_inputs._padded_batches(  # pylint: disable=protected-access
      iter(examples), padding, 2, 2))) == 2


@pytest.mark.slow
def test_stage2_starts_from_stage1_parameters(straight_run, tmp_path):
  stage1_dir, stage1 = straight_run
  stage2 = _train(tmp_path, train_steps=0,
                  initial_checkpoint_path=str(stage1_dir / "checkpoints" / "6"))
  assert int(stage2.step) == 0
  _assert_trees_equal(stage2.params, stage1.params)
  # A fresh optimizer: Adam's moments start at zero.
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(
      stage2.opt_state) if np.ndim(x) > 0)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(train_loop.NonFiniteLossError,
                     match=r"Non-finite loss.*last good checkpoint is step \d+"):
    _train(tmp_path, train_steps=30, learning_rate=1e30, checkpoint_period=1,
           optimizer=train_lib.create_optimizer(1e30,
                                                clip_gradient_norm=None))
  manager = checkpoints.CheckpointManager(tmp_path)
  steps = manager.all_steps()
  assert steps, "the finite steps before the failure were saved"
  trainer_params = checkpoints.restore_params(
      tmp_path / "checkpoints" / str(steps[-1]),
      jax.eval_shape(lambda: models.unboxed_params(
          _model().get_initial_variables(jax.random.PRNGKey(0),
                                         {"decoder_input_tokens": (1, 4)}))))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(trainer_params))


def _summaries(directory: pathlib.Path) -> dict[str, dict[int, float | str]]:
  """{tag: {step: value}} of the TensorBoard event files in `directory`; a
  text summary's value is its text."""
  values = {}
  for path in directory.glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        values.setdefault(value.tag, {})[event.step] = (
            array.item().decode() if array.dtype == object else float(array))
  return values


@pytest.mark.slow
def test_summaries_log_each_loss_term_and_real_tokens_per_step(straight_run):
  model_dir, _ = straight_run
  train_values = _summaries(model_dir / "train")
  for tag in ("loss", "nig_loss", "tt_loss", "ut_loss", "gradient_norm",
              "timing/steps_per_second", "timing/tokens_per_second"):
    assert sorted(train_values[tag]) == [3, 6], tag
  # t5x's text summary of the gin config, at the run's first step.
  assert list(train_values["config"]) == [0]
  # input_tokens: the mean non-padding tokens of the window's batches.
  batches = _training_batches()
  for step in (3, 6):
    window = [next(batches) for _ in range(3)]
    expected = np.mean([np.count_nonzero(b["decoder_target_tokens"]) +
                        np.count_nonzero(b["item_input_tokens"])
                        for b in window])
    assert train_values["input_tokens"][step] == pytest.approx(expected)
  assert expected < 4 * sum(LENGTHS.values())  # Padding is not counted.
  # The train tags, in the validation run: one TensorBoard chart per tag.
  validation_values = _summaries(model_dir / "validation")
  assert sorted(validation_values) == sorted(
      ("loss", "nig_loss", "tt_loss", "ut_loss", "target_tokens",
       "contrastive_examples"))
  for steps in validation_values.values():
    assert sorted(steps) == [3, 6]
  assert validation_values["contrastive_examples"][6] == 4


@pytest.mark.slow
def test_summaries_log_the_learning_rate_of_the_step(tmp_path):
  # The shipped optimizer: a linear warm-up from 0 to 1e-2 over 4 steps.
  _train(tmp_path, train_steps=6, log_period=2, checkpoint_period=6,
         validation_batches=0,
         optimizer=train_lib.create_optimizer(learning_rate=1e-2,
                                              warmup_steps=4))
  # Step s applies the rate of the schedule's count s - 1, as t5x logs it.
  assert _summaries(tmp_path / "train")["learning_rate"] == pytest.approx(
      {2: 0.25e-2, 4: 0.75e-2, 6: 1e-2})


def test_gin_config_text_summary(tmp_path):
  gin.clear_config()
  try:
    gin.parse_config(["import trainer.train_loop", "train.log_period = 7"])
    train_metrics.write_gin_config(tmp_path, 5)
  finally:
    gin.clear_config()
  text = _summaries(tmp_path)["config"][5]
  assert "train.log_period = 7" in text


@pytest.mark.slow
def test_training_curves_plot_the_loss_terms_not_the_config(straight_run,
                                                            tmp_path):
  model_dir, _ = straight_run
  train_curves = curves.read_scalars(model_dir / "train")
  assert "config" not in train_curves
  for tag in ("nig_loss", "tt_loss"):
    assert train_curves[tag][0] == [3, 6]
  curves.plot_losses({"run": train_curves}, ("nig_loss", "tt_loss"),
                     tmp_path / "curves.png")
  assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_orbax_info_logs_can_be_hidden(straight_run, caplog):
  model_dir, _ = straight_run
  absl_logger = logging.getLogger("absl")
  drop = checkpoints._drop_orbax_info  # pylint: disable=protected-access
  hidden_before = drop in absl_logger.filters  # Another test may have hid.

  def orbax_info():
    caplog.clear()
    model_dir_lib.load_for_inference(model_dir, step=6)
    return [r for r in caplog.records
            if "/orbax/" in r.pathname and r.levelno < logging.WARNING]

  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger="absl")
  absl_logger.removeFilter(drop)
  try:
    assert orbax_info()
    checkpoints.hide_orbax_info_logs()
    assert not orbax_info()
  finally:
    if not hidden_before:
      absl_logger.removeFilter(drop)


def test_progress_line_reports_losses_speed_and_eta(tmp_path, caplog):
  writer = metric_writers.create_default_writer(str(tmp_path))
  progress = train_metrics.Progress(writer, start_step=0, train_steps=10)
  for loss in (1.0, 3.0):
    progress.add({"loss": loss, "nig_loss": 2.0, "tt_loss": 3.0,
                  "ut_loss": 4.0, "input_tokens": 100.0})
  caplog.set_level(logging.INFO)
  progress.report(2)
  writer.flush()
  lines = [r.getMessage() for r in caplog.records if "step 2/10" in
           r.getMessage()]
  assert len(lines) == 1 and re.fullmatch(
      r"step 2/10  loss 2\.0000  nig 2\.0000  tt 3\.0000  ut 4\.0000  \|  "
      r"[\d.]+ steps/s  \d+ tokens/s  ETA \d+:\d\d:\d\d", lines[0]), lines
  values = _summaries(tmp_path)
  assert values["loss"][2] == 2.0
  assert values["timing/tokens_per_second"][2] == pytest.approx(
      100 * values["timing/steps_per_second"][2], rel=1e-6)
  assert "learning_rate" not in values


def test_split_metrics_weigh_batches_by_tokens_and_examples():
  model = _model(alpha=0.125, beta=-0.025)
  full = {"nig_loss": 1.0, "tt_loss": 2.0, "ut_loss": 3.0,
          "target_tokens": 10.0, "contrastive_examples": 4.0}
  padded = {"nig_loss": 4.0, "tt_loss": 1.0, "ut_loss": 0.5,
            "target_tokens": 2.0, "contrastive_examples": 1.0}
  metrics = train_metrics.split_metrics(model, [full, padded])
  nig = (10 * 1.0 + 2 * 4.0) / 12
  tt = (4 * 2.0 + 1 * 1.0) / 5
  ut = (4 * 3.0 + 1 * 0.5) / 5
  assert metrics == pytest.approx({
      "loss": 0.9 * nig + 0.125 * tt - 0.025 * ut, "nig_loss": nig,
      "tt_loss": tt, "ut_loss": ut, "target_tokens": 12.0,
      "contrastive_examples": 5.0})


@pytest.mark.slow
def test_keep_period_keeps_every_nth_checkpoint(tmp_path):
  _train(tmp_path, train_steps=6, checkpoint_period=1, keep_checkpoints=1,
         keep_period=2, validation_batches=0)
  assert checkpoints.CheckpointManager(tmp_path).all_steps() == [2, 4, 6]


def test_a_non_finite_validation_metric_never_ranks_best(tmp_path):
  manager = checkpoints.CheckpointManager(tmp_path, keep=1,
                                          best_metric="validation/loss")
  for step, loss in ((1, 2.0), (2, float("nan")), (3, 3.0)):
    manager.save(train_lib.TrainState(
        step=np.int32(step), params={"w": np.ones(2, np.float32)},
        opt_state={"m": np.zeros(2, np.float32)}), {"validation/loss": loss})
  assert manager.best_step() == 1
  assert manager.all_steps() == [1, 3]
  manager.close()


@pytest.mark.slow
def test_cli_reports_configuration_errors_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "trainer.train",
       "--gin_file=trainer/configs/runs/tiny_stage1.gin",
       f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=-1",
       "--gin.DATA_DIR='unused'", "--gin.VOCABULARY='unused'"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert "ValueError: train_steps must be >= 0, got -1." in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_task_names_the_registered_ones(tmp_path):
  with pytest.raises(ValueError, match=r"No seqio task or mixture 'calrec_x' "
                     rf"\(MIXTURE_OR_TASK_NAME\).*{TASK}"):
    _train(tmp_path, train_steps=3, mixture_or_task_name="calrec_x")
  with pytest.raises(ValueError,
                     match=r"'calrec_none' \(VALIDATION_TASK_NAME\)"):
    _train(tmp_path, train_steps=3,
           validation_mixture_or_task_name="calrec_none")


def test_a_validation_task_without_its_split_fails_before_training(
    tmp_path):
  train_only, mixture = "trainer_test_train_only", "trainer_test_mixture"
  task = seqio.TaskRegistry.get(TASK)
  seqio.TaskRegistry.add(
      train_only, source=seqio.FunctionDataSource(_examples, splits=["train"]),
      preprocessors=task.preprocessors, output_features=task.output_features)
  seqio.MixtureRegistry.add(mixture, [TASK, train_only], default_rate=1.0)
  try:
    for name, of_mixture in ((train_only, ""), (mixture, f" (of '{mixture}')")):
      with pytest.raises(ValueError, match=re.escape(
          f"The validation task '{train_only}'{of_mixture} has no "
          "'validation' split, only train: set VALIDATION_TASK_NAME to a task "
          "that has one, or train.validation_batches = 0")):
        _train(tmp_path, train_steps=3, validation_mixture_or_task_name=name)
  finally:
    seqio.MixtureRegistry.remove(mixture)
    seqio.TaskRegistry.remove(train_only)
  assert not (tmp_path / model_dir_lib.MODEL_JSON).exists()


@pytest.mark.parametrize("lengths", [{"inputs": 32}, {"inputs": 32,
                                                      "targets": 0}])
def test_feature_lengths_without_a_positive_target_budget_are_refused(
    tmp_path, lengths):
  with pytest.raises(ValueError, match=re.escape(
      "TASK_FEATURE_LENGTHS must give positive token budgets for 'inputs' and "
      f"'targets', got {lengths!r}.")):
    _train(tmp_path, train_steps=3, task_feature_lengths=lengths)


def test_a_model_dir_without_checkpoints_says_so(tmp_path, vocabulary_path):
  """A run that stopped before its first checkpoint leaves model.json."""
  model_dir_lib.write_model_metadata(
      tmp_path, _model(), seqio.SentencePieceVocabulary(str(vocabulary_path)),
      LENGTHS, "validation/loss", "min")
  message = re.escape(f"MODEL_DIR {tmp_path} has no checkpoints yet")
  for step in (None, 200):
    with pytest.raises(FileNotFoundError, match=message):
      model_dir_lib.inference_checkpoint(tmp_path, step)
  (tmp_path / checkpoints.CHECKPOINTS_DIR).mkdir()
  with pytest.raises(FileNotFoundError, match=message):
    model_dir_lib.resolve_checkpoint(tmp_path)


@pytest.mark.slow
def test_overfits_and_generates_its_training_targets(tmp_path):
  """Near-zero NIG loss; the loaded checkpoint greedily decodes the targets."""
  final = _train(tmp_path, train_steps=200, learning_rate=1e-2,
                 checkpoint_period=50, keep_checkpoints=1,
                 model=_model(alpha=0.0, beta=0.0),
                 optimizer=train_lib.create_optimizer(1e-2, warmup_steps=10),
                 best_mode="max")
  loaded = model_dir_lib.load_for_inference(tmp_path, step=200)
  _assert_trees_equal(loaded.params, final.params)
  batch = {k: np.asarray(v) for k, v in next(seqio.get_dataset(
      TASK, LENGTHS, train_inputs.default_feature_converter_cls()(),
      dataset_split="validation", batch_size=4).as_numpy_iterator()).items()}
  _, metrics = loaded.model.loss_fn(loaded.params, batch, dropout_rng=None)
  assert float(metrics["nig_loss"]) < 0.05

  prompts = [loaded.vocabulary.encode(p) for p in PROMPTS]
  decodes, aux = loaded.model.predict_batch_with_aux(
      loaded.params, models.prompt_batch(prompts, 4, loaded.prompt_length),
      jax.random.PRNGKey(0), num_decodes=2, temperature=0.0,
      max_decode_length=24)
  texts = [loaded.vocabulary.decode(
      [t for t in row.tolist() if t not in (0, 1)]) for row in decodes[:, 0]]
  assert texts == TARGETS
  assert np.all(np.asarray(aux["scores"]) > -0.5)
  # Kept: the latest checkpoint and the best by 'max' validation loss, which
  # on an overfitting run is the first one.
  assert checkpoints.CheckpointManager(tmp_path).all_steps() == [50, 200]
  assert model_dir_lib.load_for_inference(tmp_path).step == 50
  assert (tmp_path / "train").is_dir() and (tmp_path / "config.gin").exists()


def test_shipped_gin_configs_bind_the_paper_settings():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        ["trainer/configs/runs/stage1.gin", "trainer/configs/models/base.gin"],
        ["MODEL_DIR = 'unused'", "DATA_DIR = 'unused'",
         "VOCABULARY = 'unused'"])
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "calrec_stage1"
    assert gin.query_parameter("%VALIDATION_TASK_NAME") == "calrec_cds"
    assert gin.query_parameter("%TRAIN_STEPS") == 150000
    assert gin.query_parameter("train.keep_period") == 15000
    assert gin.query_parameter("train.validation_batches") is None
    stage1_model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert (stage1_model.alpha, stage1_model.beta) == (0.125, -0.025)
    assert gin.query_parameter("%BATCH_SIZE") == 512
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        ["trainer/configs/runs/stage2.gin", "trainer/configs/models/base.gin"],
        ["MODEL_DIR = 'unused'", "DATA_DIR = 'unused'",
         "VOCABULARY = 'unused'",
         "MIXTURE_OR_TASK_NAME = 'calrec_industrial_and_scientific'",
         "INITIAL_CHECKPOINT_PATH = 'stage1_model_dir'"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert (model.alpha, model.beta, model.contrastive_temperature) == (
        0.125, -0.025, 0.5)
    assert 100e6 < model.config.num_params() < 120e6
    assert gin.query_parameter("%BATCH_SIZE") == 512
    assert gin.query_parameter("%LEARNING_RATE") == 1e-4
    assert gin.query_parameter("%TASK_FEATURE_LENGTHS")["inputs"] == 1024
    assert gin.query_parameter("%INITIAL_CHECKPOINT_PATH") == "stage1_model_dir"
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_cli_explains_an_unquoted_gin_string(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "trainer.train",
       "--gin_file=trainer/configs/runs/tiny_stage1.gin",
       f"--gin.MODEL_DIR={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert f"in `MODEL_DIR = {tmp_path}` (strings need quotes" in result.stderr


@pytest.mark.parametrize("bindings", [
    ["BATCH_SZE = 64"],
    # Every statement of a binding counts, not only its first line.
    ["BATCH_SIZE = 32\nBATCH_SZE = 64"],
    ["# Smaller batches.\nBATCH_SZE = 64"],
])
def test_a_misspelt_macro_is_refused_with_the_closest_name(bindings):
  gin.clear_config()
  try:
    with pytest.raises(train.ConfigError,
                       match="no gin file defines the macro BATCH_SZE; did you "
                       "mean BATCH_SIZE"):
      train.parse_gin([TINY_STAGE1], bindings)
  finally:
    gin.clear_config()


def test_bindings_may_set_defined_macros_and_new_ones_they_use(caplog):
  required = ["MODEL_DIR = 'm'", "DATA_DIR = 'd'", "VOCABULARY = 'v'"]
  gin.clear_config()
  try:
    train.parse_gin([TINY_STAGE1], [*required, "BATCH_SIZE = 64",
                                    "STEPS_BETWEEN_LOGS = 7",
                                    "train.log_period = %STEPS_BETWEEN_LOGS"])
    assert gin.query_parameter("%BATCH_SIZE") == 64
    assert gin.query_parameter("%STEPS_BETWEEN_LOGS") == 7
    assert "No gin file defines" not in caplog.text
    gin.clear_config()
    # Unlike any shipped macro and unused: maybe for an included file.
    train.parse_gin([TINY_STAGE1], [*required, "EXTRA_MACRO = 4"])
    assert "No gin file defines the macro EXTRA_MACRO" in caplog.text
  finally:
    gin.clear_config()


@pytest.mark.parametrize("binding", [
    "models.CALRecModel.temperature = 0.1",
    "CALRecModel.temperature = 0.1",
])
def test_a_renamed_parameter_names_its_new_binding(binding):
  gin.clear_config()
  try:
    with pytest.raises(train.ConfigError) as error:
      train.parse_gin([TINY_STAGE1], ["MODEL_DIR = 'm'", "DATA_DIR = 'd'",
                                      "VOCABULARY = 'v'", binding])
    assert str(error.value) == (
        "CALRecModel.temperature was renamed: bind "
        "models.CALRecModel.contrastive_temperature (tau_c of the "
        "contrastive losses; the sampling temperature is python -m "
        "evaluator.evaluate --temperature)")
  finally:
    gin.clear_config()


@pytest.mark.parametrize("files, bindings, message", [
    ([], ["train.log_period = (7"], "unbalanced brackets"),
    (["BAD_GIN"], [], "Unable to parse value at {BAD_GIN}:2: `B = = 2`"),
])
def test_gin_syntax_errors_name_the_statement(tmp_path, files, bindings,
                                              message):
  bad_gin = tmp_path / "bad.gin"
  bad_gin.write_text("import trainer.train_loop\nB = = 2\n")
  files = [str(bad_gin) if f == "BAD_GIN" else f for f in files]
  gin.clear_config()
  try:
    with pytest.raises(train.ConfigError) as error:
      train.parse_gin([TINY_STAGE1, *files], bindings)
    assert message.format(BAD_GIN=bad_gin) in str(error.value)
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_cli_rejects_a_missing_gin_file():
  result = subprocess.run(
      [sys.executable, "-m", "trainer.train"], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "error: give at least one --gin_file" in result.stderr


def test_rewrite_gin_args():
  assert train.rewrite_gin_args(
      ["prog", "--gin.TRAIN_STEPS=10", "--gin_file=x.gin"]) == [
          "prog", "--gin_bindings=TRAIN_STEPS = 10", "--gin_file=x.gin"]
  with pytest.raises(ValueError, match="--gin.TRAIN_STEPS has no value"):
    train.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS"])


REQUIRED_BINDINGS = ["MODEL_DIR = 'm'", "DATA_DIR = 'd'", "VOCABULARY = 'v'"]


def _parse_gin_error(files, bindings) -> str:
  gin.clear_config()
  try:
    with pytest.raises(train.ConfigError) as error:
      train.parse_gin(files, bindings)
  finally:
    gin.clear_config()
  return str(error.value)


def test_a_macro_that_a_gin_file_uses_may_be_set_by_a_binding(tmp_path):
  uses = tmp_path / "uses.gin"
  uses.write_text("import trainer.train_loop\n"
                  "train.validation_batches = %EVAL_STEPS\n")
  gin.clear_config()
  try:
    train.parse_gin([TINY_STAGE1, str(uses)],
                    [*REQUIRED_BINDINGS, "EVAL_STEPS = 2"])
    assert gin.query_parameter(
        "train.validation_batches").scoped_configurable_fn() == 2
  finally:
    gin.clear_config()
  # Unset, it is named without gin's dump of the whole configuration.
  assert _parse_gin_error([TINY_STAGE1, str(uses)], REQUIRED_BINDINGS) == (
      "the configuration uses EVAL_STEPS but nothing defines it: add "
      "--gin.EVAL_STEPS=VALUE")


@pytest.mark.parametrize("binding, instead", [
    ("EVAL_PERIOD = 500", "set train.checkpoint_period"),
    ("EVAL_STEPS = 20", "set train.validation_batches"),
    ("MIXTURE_OR_TASK_MODULE = 'tasks.mixtures'",
     "not needed: train.gin imports tasks.mixtures"),
    ("TRAIN_STEPS_RELATIVE = 100", "set TRAIN_STEPS"),
])
def test_a_t5x_macro_without_counterpart_names_what_to_set(binding, instead):
  message = _parse_gin_error([TINY_STAGE1], [*REQUIRED_BINDINGS, binding])
  name = binding.split()[0]
  assert message.startswith(f"{name} is a t5x macro that trainer/configs "
                            f"lacks; {instead}")
  assert "did you mean" not in message


def test_dropout_rate_macro_sets_the_network_dropout():
  gin.clear_config()
  try:
    train.parse_gin(
        ["trainer/configs/runs/stage2.gin", "trainer/configs/models/base.gin"],
        [*REQUIRED_BINDINGS, "MIXTURE_OR_TASK_NAME = 'calrec_x'",
         "INITIAL_CHECKPOINT_PATH = 'stage1'", "DROPOUT_RATE = 0.1"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.config.dropout_rate == 0.1
  finally:
    gin.clear_config()


def test_a_missing_model_gin_file_is_named_in_one_line():
  message = _parse_gin_error(["trainer/configs/runs/stage1.gin"],
                             REQUIRED_BINDINGS)
  assert message.startswith("no gin file defines MODEL: add a model, e.g. "
                            "--gin_file=trainer/configs/models/tiny.gin")
  assert "\n" not in message


@pytest.mark.parametrize("bindings", [[], ["MODEL_DIR = 'm'"]])
def test_a_missing_run_config_is_named_not_a_close_macro(bindings):
  message = _parse_gin_error(["trainer/configs/models/tiny.gin"], bindings)
  assert message.startswith(
      "no gin file configures the run (defines MODEL_DIR and the run's other "
      "macros): add a run config, one of ")
  assert "trainer/configs/runs/stage1.gin, " in message
  assert "trainer/configs/runs/tiny_stage2.gin" in message
  assert "did you mean" not in message


def test_tiny_stage1_keeps_a_few_model_selection_candidates():
  gin.clear_config()
  try:
    train.parse_gin([TINY_STAGE1], REQUIRED_BINDINGS)
    period = gin.query_parameter("train.checkpoint_period")
    keep_period = gin.query_parameter("train.keep_period")
    steps = range(period, gin.query_parameter("%TRAIN_STEPS") + 1, period)
  finally:
    gin.clear_config()
  assert len([step for step in steps if step % keep_period == 0]) >= 2


@pytest.mark.slow
def test_stage2_from_another_network_names_the_differing_fields(straight_run,
                                                                tmp_path):
  stage1_dir, stage1 = straight_run
  config = _model().config
  other = dataclasses.replace(config, emb_dim=32, mlp_dim=256)
  with pytest.raises(ValueError) as error:
    _train(tmp_path / "other", train_steps=0,
           model=models.CALRecModel(other),
           initial_checkpoint_path=str(stage1_dir))
  # The first line: gin adds the configurable's name below.
  message = str(error.value).splitlines()[0]
  assert re.fullmatch(
      r"The checkpoint \S+/checkpoints/6 is of another network: emb_dim 64 "
      r"there, 32 here; mlp_dim 128 there, 256 here \(network\."
      r"TransformerConfig\)\. Train with the model gin file of that run \(see "
      r"its model\.json\)\.", message), message
  # Dropout leaves the parameters as they are: Stage II may change it.
  dropout = models.CALRecModel(dataclasses.replace(config, dropout_rate=0.1))
  stage2 = _train(tmp_path / "dropout", train_steps=0, model=dropout,
                  initial_checkpoint_path=str(stage1_dir))
  _assert_trees_equal(stage2.params, stage1.params)


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "trainer.train", *args],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
def test_cli_distributed_without_a_cluster_names_the_flags_to_pass():
  result = _cli(f"--gin_file={TINY_STAGE1}", "--distributed")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert ("error: --distributed: coordinator_address should be defined. Where "
          "no Cloud TPU, SLURM or Open MPI cluster is detected, pass "
          "--coordinator_address=HOST0:PORT --num_processes=N --process_id=I."
          ) in result.stderr
