"""The JAX generator: per-user seeds, fixed shapes, budgeted prompts."""

import dataclasses
import glob
import itertools
import json
import shutil
import subprocess
import sys

import evaluator_testdata
import flax.linen as nn
import jax
import jax.numpy as jnp
import newline_vocab
import numpy as np
import pyarrow.parquet as pq
import pytest
import tasks_testdata

from evaluator import evaluate
from evaluator import generation
from evaluator import model_handler
from evaluator import retrieval
from pipelines import sequences
from pipelines import templates
from tasks import preprocessors
from tasks import vocab
from trainer import checkpoints
from trainer import decoding
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import train_lib

NUM_GENERATIONS = 3


@pytest.fixture(scope="module")
def generator_parts(tmp_path_factory):
  vocabulary_path = tasks_testdata.train_test_vocabulary(
      tmp_path_factory.mktemp("vocab") / "spm.model")
  vocabulary = vocab.get_vocabulary(vocabulary_path)
  config = network.TransformerConfig(
      vocab_size=vocabulary.vocab_size, emb_dim=32, num_heads=4,
      num_kv_heads=2, head_dim=8, mlp_dim=64, num_layers=2)
  model = models.CALRecModel(config)
  variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                          {"decoder_input_tokens": (1, 8)})
  return model, nn.meta.unbox(variables)["params"], vocabulary


def _generator(parts, batch_size, prompt_length=150, temperature=1.0):
  model, params, vocabulary = parts
  return model_handler.JaxGenerator(
      model, params, vocabulary, prompt_length=prompt_length,
      num_generations=NUM_GENERATIONS, temperature=temperature,
      max_decode_length=6, batch_size=batch_size)


def _direct_samples(parts, request, prompt_length=150, temperature=1.0):
  """The samples `_generator` should give `request`, from the model API.

  The budgeted prompt (history oldest first) as a batch of one, sampled
  under PRNGKey(request.seed); each decode decoded up to its first EOS or 0.
  """
  model, params, vocabulary = parts
  prompt = preprocessors.budgeted_prompt(request.history_texts, vocabulary,
                                         prompt_length - 1).token_ids
  decodes, aux = model.predict_batch_with_aux(
      params, models.prompt_batch([prompt], 1, prompt_length),
      jax.random.PRNGKey(request.seed), num_decodes=NUM_GENERATIONS,
      temperature=temperature, max_decode_length=6)
  texts = [vocabulary.decode(list(itertools.takewhile(
      lambda token: token not in (model.eos_id, 0), row)))
           for row in np.asarray(decodes[0]).tolist()]
  return list(zip(texts, np.asarray(aux["scores"][0]).tolist()))


def _requests():
  item = templates.item_text("Red Wire Kit", "Tools", "Hillman", "$3.99")
  other = templates.item_text("Blue Nail Pack", "Tools", None, None)
  histories = [(item,), (item, other), (other, item, other)]
  return [generation.GenerationRequest(h, generation.user_seed(0, f"u{i}"))
          for i, h in enumerate(histories)]


def _assert_same_samples(outputs, expected):
  for samples, expected_samples in zip(outputs, expected, strict=True):
    assert [t for t, _ in samples] == [t for t, _ in expected_samples]
    # Other batch shapes may round the log-probs differently.
    np.testing.assert_allclose([s for _, s in samples],
                               [s for _, s in expected_samples], rtol=1e-5)


@pytest.mark.slow
def test_samples_do_not_depend_on_batching(generator_parts):
  requests = _requests()
  batched = _generator(generator_parts, batch_size=4)
  together = batched.generate(requests)
  _assert_same_samples(batched.generate(requests[::-1])[::-1], together)
  _assert_same_samples(
      _generator(generator_parts, batch_size=1).generate(requests), together)
  for samples in together:
    assert len(samples) == NUM_GENERATIONS
    logprobs = [logprob for _, logprob in samples]
    assert all(np.isfinite(logprobs)) and max(logprobs) <= 0
    assert logprobs == sorted(logprobs, reverse=True)
  # Different seeds draw different samples.
  assert together[0] != together[1]


@pytest.mark.slow
def test_samples_equal_the_models_own_sampling(generator_parts):
  # Batches of 2 over 3 requests: the last batch has a padding row.
  requests = _requests()
  _assert_same_samples(
      _generator(generator_parts, batch_size=2).generate(requests),
      [_direct_samples(generator_parts, request) for request in requests])


@pytest.mark.slow
def test_samples_follow_the_seed_and_the_temperature(generator_parts):
  history = _requests()[1].history_texts
  requests = [generation.GenerationRequest(history, seed)
              for seed in (11, 12, 11)]
  hot = _generator(generator_parts, batch_size=4).generate(requests)
  _assert_same_samples(hot[2:], hot[:1])
  assert [t for t, _ in hot[0]] != [t for t, _ in hot[1]]
  cold = _generator(generator_parts, batch_size=4,
                    temperature=0.5).generate(requests[:1])
  assert [t for t, _ in cold[0]] != [t for t, _ in hot[0]]


def test_prompts_pad_to_a_power_of_two_bucket_of_their_own(generator_parts):
  generator = _generator(generator_parts, batch_size=2, prompt_length=150)
  assert [generator._bucket(tuple(range(n))) for n in (1, 63, 64, 127, 149)
         ] == [64, 64, 128, 128, 150]


@pytest.mark.slow
def test_samples_of_mixed_buckets_equal_each_alone(generator_parts):
  # A long history lands in a larger bucket than the short ones; one call
  # over all of them gives each request its own samples.
  requests = _requests()
  item = requests[2].history_texts[0]
  long_request = generation.GenerationRequest((item,) * 12, 5)
  generator = _generator(generator_parts, batch_size=2, prompt_length=400)
  prompts = [generator._prompt_tokens(r) for r in (requests[0], long_request)]
  assert generator._bucket(prompts[0]) < generator._bucket(prompts[1])
  mixed = generator.generate([requests[0], long_request, requests[1]])
  alone = [generator.generate([request])[0]
           for request in (requests[0], long_request, requests[1])]
  _assert_same_samples(mixed, alone)


def test_request_whose_newest_item_cannot_fit_gets_no_samples(generator_parts):
  requests = _requests()
  long_item = templates.item_text(" ".join(["Assortment"] * 25), "Tools",
                                  "Hillman", "$3.99")
  requests.append(generation.GenerationRequest((long_item,), 7))
  outputs = _generator(generator_parts, batch_size=4).generate(requests)
  assert outputs[-1] == []
  assert all(len(samples) == NUM_GENERATIONS for samples in outputs[:-1])


def test_the_progress_line_counts_toward_the_workers_share(generator_parts):
  """A worker told its share of the users shows an ETA toward it; users
  without samples count as done too."""
  model, params, vocabulary = generator_parts
  requests = _requests()
  shared = model_handler.JaxGenerator(
      model, params, vocabulary, prompt_length=150,
      num_generations=NUM_GENERATIONS, max_decode_length=6, batch_size=2,
      expected_users=10)
  shared.generate(requests)
  assert shared.progress.line().startswith(f"{len(requests)}/10  ")
  assert " ETA " in shared.progress.line()
  unknown = _generator(generator_parts, batch_size=2)
  unknown.generate(requests[:1])
  assert unknown.progress.line().startswith("1  ")
  assert "ETA" not in unknown.progress.line()


def test_vocabularies_trained_here_end_items_at_eos_only(generator_parts):
  """They normalise "\n" away: samples are what they were before stop ids."""
  _, _, vocabulary = generator_parts
  assert vocab.item_stop_ids(vocabulary) == (vocabulary.eos_id,)


@pytest.fixture(scope="module")
def newline_parts(tmp_path_factory):
  """A model sampling from a vocabulary with newline pieces, ending at them."""
  vocabulary = newline_vocab.newline_vocabulary(
      tmp_path_factory.mktemp("newline") / "spm.model")
  config = network.TransformerConfig(
      vocab_size=vocabulary.vocab_size, emb_dim=32, num_heads=4,
      num_kv_heads=2, head_dim=8, mlp_dim=64, num_layers=2)
  model = models.CALRecModel(config,
                             stop_ids=vocab.item_stop_ids(vocabulary))
  variables = model.get_initial_variables(jax.random.PRNGKey(0),
                                          {"decoder_input_tokens": (1, 8)})
  return model, nn.meta.unbox(variables)["params"], vocabulary


@pytest.mark.slow
def test_texts_end_at_the_first_newline_as_their_log_probs_do(newline_parts):
  model, params, vocabulary = newline_parts
  newline_ids = set(model.stop_ids) - {model.eos_id}
  request = generation.GenerationRequest(("Title: a.", "Title: b."), 4)
  prompt = preprocessors.budgeted_prompt(request.history_texts, vocabulary,
                                         199).token_ids
  num_generations = 64
  decodes, aux = model.predict_batch_with_aux(
      params, models.prompt_batch([prompt], 1, 200),
      jax.random.PRNGKey(request.seed), num_decodes=num_generations,
      temperature=1.0, max_decode_length=10)
  generator = model_handler.JaxGenerator(
      model, params, vocabulary, prompt_length=200,
      num_generations=num_generations, temperature=1.0, max_decode_length=10,
      batch_size=1)
  samples = generator.generate([request])[0]
  cut = 0
  for (text, logprob), row, score in zip(
      samples, np.asarray(decodes[0]).tolist(),
      np.asarray(aux["scores"][0]).tolist(), strict=True):
    assert "\n" not in text
    np.testing.assert_allclose(logprob, score, rtol=1e-5)
    kept = list(itertools.takewhile(lambda token: token not in model.stop_ids,
                                    row))
    if len(kept) < len(row) and row[len(kept)] in newline_ids:
      # The stop piece's text before its newline ('.' of '.\n') is kept.
      cut += 1
      assert text == vocabulary.decode(kept + [row[len(kept)]]).split("\n")[0]
    elif len(kept) < len(row) and row[len(kept)] == model.eos_id:
      assert text == vocabulary.decode(kept)
  assert cut >= 3


STEPS = (7, 9)


@pytest.fixture(scope="module")
def model_dir(generator_parts, tmp_path_factory):
  """A model dir with checkpoints at STEPS, each with its own parameters.

  Returns the dir and {step: params}.
  """
  model, params, vocabulary = generator_parts
  other_params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(1), {"decoder_input_tokens": (1, 8)}))["params"]
  params_by_step = dict(zip(STEPS, (params, other_params)))
  model_dir = tmp_path_factory.mktemp("run") / "model"
  model_dir_lib.write_model_metadata(
      model_dir, model, vocabulary, {"inputs": 400, "targets": 16},
      best_metric=None, best_mode="min")
  optimizer = train_lib.create_optimizer()
  manager = checkpoints.CheckpointManager(model_dir)
  for step, step_params in params_by_step.items():
    manager.save(train_lib.TrainState(step=jnp.int32(step), params=step_params,
                                      opt_state=optimizer.init(step_params)))
  manager.close()
  return model_dir, params_by_step


def test_load_for_inference_sets_the_vocabularys_stop_ids(model_dir,
                                                         newline_parts,
                                                         tmp_path):
  assert model_dir_lib.load_for_inference(model_dir[0]).model.stop_ids == (1,)
  model, params, vocabulary = newline_parts
  model_dir_lib.write_model_metadata(tmp_path / "model", model, vocabulary,
                                     {"inputs": 40, "targets": 8},
                                     best_metric=None, best_mode="min")
  optimizer = train_lib.create_optimizer()
  manager = checkpoints.CheckpointManager(tmp_path / "model")
  manager.save(train_lib.TrainState(step=jnp.int32(1), params=params,
                                    opt_state=optimizer.init(params)))
  manager.close()
  loaded = model_dir_lib.load_for_inference(tmp_path / "model")
  assert loaded.model.stop_ids == vocab.item_stop_ids(vocabulary)
  assert len(loaded.model.stop_ids) == 5


@pytest.fixture(scope="module")
def eval_data_dir(tmp_path_factory):
  """Tools corpus and 5 test users; returns (data dir, {user: history})."""
  items = evaluator_testdata.generated_items(30, seed=3)
  data_dir = tmp_path_factory.mktemp("data")
  users = [(f"u{i}", items[i:i + 3]) for i in range(5)]
  evaluator_testdata.write_output(data_dir, "Tools", items, users,
                                  sequences.ROLE_SPLITS[sequences.Role.EVAL])
  return data_dir, {user: tuple(item["text"] for item in user_items[:-1])
                    for user, user_items in users}


@pytest.fixture(scope="module")
def expected_kept(generator_parts, model_dir, eval_data_dir):
  """{step: {user: (kept texts, log-probs)}}, sampled from the model API.

  The same settings as `evaluate` below (prompt length 400 + 1, the paper's
  temperature, seed 0), with the parameters saved at each step.
  """
  model, _, vocabulary = generator_parts
  _, histories = eval_data_dir
  expected = {}
  for step, params in model_dir[1].items():
    expected[step] = {}
    for user, history in histories.items():
      kept = retrieval.select_predictions(_direct_samples(
          (model, params, vocabulary), generation.GenerationRequest(
              history, generation.user_seed(0, user)),
          prompt_length=401, temperature=generation.TEMPERATURE))
      expected[step][user] = (kept.texts, kept.logprobs)
  # Else the test below could not tell the steps apart.
  assert expected[STEPS[0]] != expected[STEPS[1]]
  return expected


# --checkpoint_step, and the step whose parameters it must load: the earlier
# step asked for, and without the flag the run's best step, here the latest
# (no validation metric tracked).
@pytest.mark.parametrize("flag_step, step", [(7, 7), (None, 9)])
@pytest.mark.slow
def test_evaluate_generates_with_the_checkpoint_step_asked_for(
    model_dir, eval_data_dir, expected_kept, tmp_path, flag_step, step):
  data_dir, _ = eval_data_dir
  flags = [] if flag_step is None else [f"--checkpoint_step={flag_step}"]
  summary = evaluate.run([
      f"--data_dir={data_dir}", "--category=Tools",
      f"--output_dir={tmp_path / 'out'}", "--model=calrec",
      f"--model_dir={model_dir[0]}", *flags,
      f"--num_generations={NUM_GENERATIONS}", "--max_decode_length=6",
      "--batch_size=4", "--runner=FnApiRunner"])
  assert summary["num_users"] == 5 and summary["num_rejected"] == 0
  assert summary["checkpoint_step"] == step
  users = pq.read_table(glob.glob(str(tmp_path / "out" / "users-*.parquet")))
  kept = {user["user_id"]: (tuple(user["kept_texts"]),
                            tuple(user["kept_logprobs"]))
          for user in users.to_pylist()}
  assert kept.keys() == expected_kept[step].keys()
  for user, (texts, logprobs) in kept.items():
    expected_texts, expected_logprobs = expected_kept[step][user]
    assert texts == expected_texts
    # Other batch shapes may round the log-probs differently.
    np.testing.assert_allclose(logprobs, expected_logprobs, rtol=1e-5)


@pytest.mark.slow
def test_the_workers_model_samples_with_the_sampler_asked_for(
    model_dir, generator_parts):
  """--sampler reaches the model each worker loads: its inverse_cdf samples
  are the model API's with that sampler, and another stream than gumbel's."""
  assert generation.SAMPLERS == decoding.SAMPLERS
  assert generation.SAMPLER == models.CALRecModel(
      generator_parts[0].config).sampler
  model, _, vocabulary = generator_parts
  requests = _requests()
  generators = {sampler: model_handler.GeneratorLoader(
      str(model_dir[0]), num_generations=NUM_GENERATIONS, temperature=1.0,
      sampler=sampler, max_decode_length=6, batch_size=4,
      expected_users=len(requests))() for sampler in generation.SAMPLERS}
  outputs = {sampler: generator.generate(requests)
             for sampler, generator in generators.items()}
  assert all(generator.progress.total == len(requests)
             for generator in generators.values())
  inverse_cdf = models.CALRecModel(model.config, sampler="inverse_cdf")
  _assert_same_samples(outputs["inverse_cdf"], [_direct_samples(
      (inverse_cdf, model_dir[1][STEPS[-1]], vocabulary), request,
      prompt_length=401) for request in requests])
  assert ([[text for text, _ in samples] for samples in outputs["gumbel"]] !=
          [[text for text, _ in samples]
           for samples in outputs["inverse_cdf"]])


@pytest.mark.slow
def test_the_workers_model_samples_in_the_dtype_asked_for(
    model_dir, generator_parts):
  """--dtype changes the activations only: the float32-trained run sampled
  in bfloat16 gives the samples of the model API with a bfloat16 network and
  the same float32 parameters, and its own dtype when none is asked for."""
  model, _, vocabulary = generator_parts
  loaded = model_dir_lib.load_for_inference(str(model_dir[0]),
                                            dtype="bfloat16")
  assert loaded.model.config == dataclasses.replace(model.config,
                                                    dtype="bfloat16")
  assert {leaf.dtype for leaf in jax.tree.leaves(loaded.params)} == {
      np.dtype("float32")}
  assert model_dir_lib.load_for_inference(
      str(model_dir[0])).model.config.dtype == model.config.dtype
  requests = _requests()
  outputs = model_handler.GeneratorLoader(
      str(model_dir[0]), num_generations=NUM_GENERATIONS, temperature=1.0,
      dtype="bfloat16", max_decode_length=6, batch_size=4)().generate(
          requests)
  bfloat16 = models.CALRecModel(loaded.model.config)
  expected = [_direct_samples((bfloat16, model_dir[1][STEPS[-1]], vocabulary),
                              request, prompt_length=401)
              for request in requests]
  assert [[t for t, _ in samples] for samples in outputs] == [
      [t for t, _ in samples] for samples in expected]
  # Other batch shapes round bfloat16 sums differently (8 mantissa bits).
  np.testing.assert_allclose(
      [s for samples in outputs for _, s in samples],
      [s for samples in expected for _, s in samples], rtol=2e-3)


_CACHED_SAMPLES = """
import json, sys
import jax
from evaluator import generation, model_handler
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kwargs: hits.append(event)
    if event == "/jax/compilation_cache/cache_hits" else None)
generator = model_handler.GeneratorLoader(
    sys.argv[1], num_generations=2, max_decode_length=6, batch_size=2,
    compilation_cache_dir=sys.argv[2])()
samples = generator.generate([generation.GenerationRequest(
    ("Red Wire Kit, Tools",), seed=3)])
print(json.dumps({"samples": samples, "hits": len(hits)}))
"""


@pytest.mark.slow
def test_a_later_run_loads_the_compiled_sampler_from_the_cache(model_dir,
                                                               tmp_path):
  """--compilation_cache_dir: the first process compiles the sampler and
  stores it, the second loads it from the folder, with the same samples."""
  cache = tmp_path / "jax_cache"

  def run() -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _CACHED_SAMPLES, str(model_dir[0]),
         str(cache)], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])

  first = run()
  assert first["hits"] == 0 and any(cache.iterdir())
  second = run()
  assert second["hits"] >= 1 and second["samples"] == first["samples"]


def test_a_corrupt_checkpoint_is_refused_in_one_line(model_dir, eval_data_dir,
                                                     tmp_path, capsys):
  """The reliability issue's item 4, for the evaluator: a step whose
  parameter files changed since it was saved is a usage error naming it."""
  copied = tmp_path / "model"
  shutil.copytree(model_dir[0], copied)
  step_dir = copied / "checkpoints" / str(STEPS[-1])
  largest = max((path for path in (step_dir / "params").rglob("*")
                 if path.is_file()), key=lambda path: path.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:10])
  config, _ = evaluate.parse_flags([
      f"--data_dir={eval_data_dir[0]}", "--category=Tools",
      f"--output_dir={tmp_path / 'eval'}", f"--model_dir={copied}"])
  with pytest.raises(SystemExit):
    evaluate.resolve_or_exit(config)
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"python -m evaluator.evaluate: error: The checkpoint {step_dir} is "
      "unusable: its parameter files differ from those it saved (truncated, "
      "removed or rewritten).")


def test_a_model_json_of_before_the_rename_loads_its_tau_c(model_dir,
                                                           tmp_path):
  """model.json's "loss" said "temperature" for tau_c before the parameter
  was renamed contrastive_temperature; such directories still load."""
  copied = tmp_path / "model"
  shutil.copytree(model_dir[0], copied)
  path = copied / model_dir_lib.MODEL_JSON
  metadata = json.loads(path.read_text())
  loss = metadata["loss"]
  loss["temperature"] = 0.25
  del loss["contrastive_temperature"]
  path.write_text(json.dumps(metadata))
  loaded = model_dir_lib.load_for_inference(copied)
  assert loaded.model.contrastive_temperature == 0.25
