r"""Throughput and peak memory of the preprocessing job on generated reviews.

  python -m benchmarks.preprocess [--num_reviews=1000000] [--workers=2]
      [--extra_meta_items=0] [--data_dir=DIR] [--repeats=1]

Generates about `--num_reviews` review lines with `experiments.sample_data`
(plain JSON, so files split into ranges), plus `--extra_meta_items` meta rows
of items no review mentions, spread over the categories (real meta files list
every item of a category, far more than its 5-core reviews use, and the meta
is what a worker could be tempted to hold whole). Then runs, each in its own
process:

- the Beam job on FnApiRunner with `--workers` worker processes;
- the baseline: the same transformation as a plain single-process loop over
  the same per-element functions, writing the same files.

Both outputs must be byte-identical, or the benchmark fails. Prints one JSON
line per figure of the Beam job, each with the plain loop's figure as
baseline: reviews/s, wall seconds, CPU seconds (user + system of the process
and its children), peak resident memory summed over the process and its
children, and the peak of the largest single process (what one worker must
fit; memory sampled every 20 ms). With `--repeats`, each time figure is the
best, and each memory figure the worst, of that many alternating runs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import filecmp
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

import psutil

from benchmarks import figures
from experiments import sample_data
from pipelines import config as config_lib
from pipelines import outputs
from pipelines import preprocess
from pipelines import processing
from pipelines import run_dir
from pipelines import textio

# Review lines the generator writes per user, measured on its default sample.
_LINES_PER_USER = 8.3


def plain_loop(config: config_lib.Config, output_dir: str) -> None:
  """The job's transformation as one sequential loop, no Beam."""
  review_tasks, meta_tasks = preprocess.plan_tasks(config, range_bytes=1 << 62)
  counts = collections.defaultdict(collections.Counter)
  rejects = collections.defaultdict(list)
  meta_parts = collections.defaultdict(list)
  for name, path, start, end in meta_tasks:
    chunk = processing.parse_meta_lines(
        textio.read_lines(textio.FileRange(path, start, end)), path)
    meta_parts[name].append(chunk.items)
    counts[name].update(chunk.counts)
    rejects[name].extend(chunk.rejects)
  meta = {name: processing.merge_meta(parts)
          for name, parts in meta_parts.items()}
  indexes = {name: processing.AsinIndex(items) for name, items in meta.items()}
  for name, items in meta.items():
    counts[name]["meta_items"] = len(items)

  shard_parts = collections.defaultdict(list)
  for name, path, start, end in review_tasks:
    category = config.category(name)
    chunk = processing.parse_review_lines(
        textio.read_lines(textio.FileRange(path, start, end)), path, category,
        config.sampling_seed, indexes.get(name, processing.AsinIndex()))
    for shard, users in chunk.shards.items():
      shard_parts[(name, shard)].append(users)
    counts[name].update(chunk.counts)
    rejects[name].extend(chunk.rejects)

  shard_files, reject_files, stats = [], [], {}
  for category in config.categories:
    name = category.name
    item_ids = set()
    for shard in range(category.num_shards):
      result = processing.build_shard(
          processing.merge_user_events(shard_parts.pop((name, shard), [])),
          category, meta.get(name, {}))
      shard_files += outputs.write_shard(output_dir, category, shard,
                                         result.records)
      item_ids |= result.item_ids
      counts[name].update(result.counts)
      rejects[name].extend(result.rejects)
    buckets = processing.bucket_rejects(rejects[name], category.num_shards)
    reject_files += [
        outputs.write_rejects(output_dir, category, bucket,
                              buckets.get(bucket, []))
        for bucket in range(category.num_shards)]
    stats[name] = outputs.write_category_files(
        output_dir, category, item_ids, counts[name], meta.get(name, {}))
  outputs.write_manifest(output_dir, config, shard_files, reject_files, stats)


def add_unreviewed_meta(config: config_lib.Config, count: int) -> None:
  """Appends `count` meta rows, of items no review mentions, to the meta
  files of `config`'s categories (round robin; generated configs name
  one plain file each)."""
  files = [category.meta[0] for category in config.categories]
  for index, path in enumerate(files):
    rows = range(index, count, len(files))
    with open(path, "a", encoding="utf-8") as f:
      f.writelines(json.dumps({
          "asin": f"Z{index}{i:09d}",
          "title": f"Unreviewed Accessory Kit {i} with Carrying Case",
          "brand": f"Brand {i % 997}", "price": f"${i % 90 + 9}.99",
          "category": [config.categories[index].name, "Accessories"],
          "main_cat": config.categories[index].name, "description": [],
          "feature": []}) + "\n" for i in rows)


@dataclasses.dataclass
class _Measured:
  """What one run of a command cost."""

  wall_s: float
  cpu_s: float
  peak_total_mib: float  # Summed over the process and its children.
  peak_process_mib: float  # The largest single process.


def _run_measured(command: Sequence[str]) -> _Measured:
  """Time, CPU and memory of a command and its children."""
  peak_total = peak_process = 0
  with tempfile.TemporaryFile() as stderr:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=stderr)
    done = threading.Event()

    def sample() -> None:
      nonlocal peak_total, peak_process
      parent = psutil.Process(process.pid)
      while not done.is_set():
        try:
          rss = [parent.memory_info().rss] + [
              child.memory_info().rss
              for child in parent.children(recursive=True)]
          peak_total = max(peak_total, sum(rss))
          peak_process = max(peak_process, *rss)
        except psutil.Error:
          pass
        time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # wait4 reports the CPU time of the process and the children it reaped.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if process.returncode:
      stderr.seek(0)
      sys.exit(f"{' '.join(command)} failed:\n"
               f"{stderr.read().decode()[-3000:]}")
  return _Measured(wall, usage.ru_utime + usage.ru_stime,
                   peak_total / 2**20, peak_process / 2**20)


def _count_lines(config: config_lib.Config) -> int:
  total = 0
  for category in config.categories:
    for pattern in category.reviews:
      for file_range in textio.plan_ranges([pattern], category.name,
                                           range_bytes=1 << 62):
        total += sum(1 for _ in textio.read_lines(file_range))
  return total


def _same_outputs(first: str, second: str) -> None:
  """Every file of `first` is in `second`, byte for byte; but for run.json,
  which only the command writes (it records the input files' times)."""
  for folder, _, names in os.walk(first):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.relpath(path, first) == run_dir.RUN_RECORD:
        continue
      other = os.path.join(second, os.path.relpath(path, first))
      if not filecmp.cmp(path, other, shallow=False):
        sys.exit(f"outputs differ: {path} vs {other}")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.preprocess",
      description=__doc__.split("\n\n")[1])
  parser.add_argument("--num_reviews", type=int, default=1_000_000,
                      help="review lines to generate (default 1,000,000)")
  parser.add_argument("--workers", type=int, default=2,
                      help="Beam worker processes (default 2)")
  parser.add_argument("--extra_meta_items", type=int, default=0,
                      help=("meta rows of unreviewed items added when "
                            "generating (default 0)"))
  parser.add_argument("--repeats", type=int, default=1,
                      help="alternating runs of each; best figure is kept")
  parser.add_argument("--data_dir", default=None,
                      help=("reuse a sample written by experiments.sample_data "
                            "--nogzip here (generated when missing)"))
  parser.add_argument("--plain_loop", metavar="OUTPUT_DIR",
                      help=argparse.SUPPRESS)  # Internal: the baseline run.
  parser.add_argument("--config", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.plain_loop:
    plain_loop(config_lib.load_config(args.config), args.plain_loop)
    return
  if (args.num_reviews < 1000 or args.workers < 1 or args.repeats < 1 or
      args.extra_meta_items < 0):
    parser.error("--num_reviews must be >= 1000, --workers and --repeats "
                 ">= 1, --extra_meta_items >= 0")

  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.data_dir or os.path.join(scratch, "data")
    config_path = os.path.join(data_dir, "config.json")
    if not os.path.exists(config_path):
      print(f"generating about {args.num_reviews} reviews in {data_dir}",
            file=sys.stderr)
      sample_data.generate(
          data_dir, seed=0, compress=False,
          num_users=math.ceil(args.num_reviews / _LINES_PER_USER))
      add_unreviewed_meta(config_lib.load_config(config_path),
                          args.extra_meta_items)
    config = config_lib.load_config(config_path)
    num_reviews = _count_lines(config)
    print(f"{num_reviews} review lines", file=sys.stderr)

    best = {name: _Measured(math.inf, math.inf, 0.0, 0.0)
            for name in ("beam", "plain")}
    for repeat in range(args.repeats):
      beam_out = os.path.join(scratch, f"beam{repeat}")
      plain_out = os.path.join(scratch, f"plain{repeat}")
      runs = {
          "beam": _run_measured([
              sys.executable, "-m", "pipelines.preprocess",
              f"--config={config_path}", f"--output_dir={beam_out}",
              f"--direct_num_workers={args.workers}",
              "--direct_running_mode=multi_processing"]),
          "plain": _run_measured([
              sys.executable, "-m", "benchmarks.preprocess",
              f"--config={config_path}", f"--plain_loop={plain_out}"]),
      }
      for name, run in runs.items():
        print(f"run {repeat} {name}: {run.wall_s:.1f} s wall, "
              f"{run.cpu_s:.1f} s CPU, {run.peak_total_mib:.0f} MiB "
              f"(largest process {run.peak_process_mib:.0f} MiB)",
              file=sys.stderr)
        kept = best[name]
        best[name] = _Measured(
            min(kept.wall_s, run.wall_s), min(kept.cpu_s, run.cpu_s),
            max(kept.peak_total_mib, run.peak_total_mib),
            max(kept.peak_process_mib, run.peak_process_mib))
      _same_outputs(beam_out, plain_out)
      _same_outputs(plain_out, beam_out)

  prefix = f"preprocess_beam_{args.workers}workers"
  beam, plain = best["beam"], best["plain"]
  figures.emit(f"{prefix}_reviews_per_s", num_reviews / beam.wall_s,
               "reviews/s", num_reviews / plain.wall_s)
  figures.emit(f"{prefix}_wall", beam.wall_s, "s", plain.wall_s)
  figures.emit(f"{prefix}_cpu", beam.cpu_s, "s", plain.cpu_s)
  figures.emit(f"{prefix}_peak_rss", beam.peak_total_mib, "MiB",
               plain.peak_total_mib)
  figures.emit(f"{prefix}_peak_rss_largest_process", beam.peak_process_mib,
               "MiB", plain.peak_process_mib)


if __name__ == "__main__":
  main()
