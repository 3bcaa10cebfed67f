"""Task and Stage-I mixture registration on a small preprocessing output."""

import collections
import itertools

import numpy as np
import pytest
import seqio
import tasks_testdata

from tasks import feature_converters
from tasks import mixtures
from tasks import names
from tasks import tasks
from tasks import vocab

# |U| written to stats.json; the records themselves are few and repeat.
NUM_USERS = {"Tiny_Cat": 10, "Mid Cat": 1000, "Big-Cat": 100_000}
LENGTHS = {"inputs": 1024, "targets": 128}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  written = {}
  for seed, category in enumerate(NUM_USERS):
    splits = ("train", "validation", "test") if category == "Mid Cat" else (
        "train",)
    written[category] = tasks_testdata.write_category(
        data_dir, category, num_users=6, seed=seed, splits=splits,
        stats_num_users=NUM_USERS[category])
  tasks_testdata.write_manifest(data_dir)
  model = tasks_testdata.train_test_vocabulary(
      tmp_path_factory.mktemp("vocab") / "test.model")
  names = mixtures.register_mixtures(data_dir, model)
  return data_dir, model, names, written


def test_names_and_splits(data):
  _, _, names, _ = data
  assert names == {"Big-Cat": "calrec_big_cat", "Mid Cat": "calrec_mid_cat",
                   "Tiny_Cat": "calrec_tiny_cat"}
  assert seqio.get_mixture_or_task("calrec_mid_cat").splits == (
      "train", "validation", "test")
  assert seqio.get_mixture_or_task("calrec_tiny_cat").splits == ("train",)
  stage1 = seqio.get_mixture_or_task(mixtures.STAGE1_MIXTURE)
  assert sorted(t.name for t in stage1.tasks) == sorted(names.values())


def test_validation_targets_are_the_last_items(data):
  _, model, _, written = data
  vocabulary = vocab.get_vocabulary(model)
  ds = seqio.get_mixture_or_task("calrec_mid_cat").get_dataset(
      LENGTHS, split="validation", shuffle=False)
  by_user = {ex["user_id"].decode(): ex for ex in ds.as_numpy_iterator()}
  for user_id, texts in written["Mid Cat"]["validation"]:
    example = by_user[user_id]
    assert vocabulary.decode(example["targets"].tolist()) == texts[-1]
    assert example["targets"][-1] == vocab.EOS_ID


def test_long_targets_keep_their_eos(data):
  ds = seqio.get_mixture_or_task("calrec_mid_cat").get_dataset(
      {"inputs": 1024, "targets": 8}, split="test", shuffle=False)
  for example in ds.as_numpy_iterator():
    assert len(example["targets"]) == 8
    assert example["targets"][-1] == vocab.EOS_ID


@pytest.mark.slow
def test_stage1_shares_follow_users_to_the_power_0_3(data):
  stage1 = seqio.get_mixture_or_task(mixtures.STAGE1_MIXTURE)
  ds = stage1.get_dataset(LENGTHS, split="train", shuffle=True, seed=0,
                          num_epochs=None, passthrough_features=["category"])
  counts = collections.Counter(
      ex["category"].decode() for ex in ds.take(4000).as_numpy_iterator())
  total_rate = sum(u ** 0.3 for u in NUM_USERS.values())
  for category, users in NUM_USERS.items():
    # Binomial(4000, p): standard deviation at most 0.0079 of a share.
    assert counts[category] / 4000 == pytest.approx(
        users ** 0.3 / total_rate, abs=0.03), counts


def test_stage1_rates_are_users_to_the_rate_exponent(data):
  data_dir, model, names, _ = data

  def rates():
    stage1 = seqio.get_mixture_or_task(mixtures.STAGE1_MIXTURE)
    return {category: stage1.get_rate(seqio.TaskRegistry.get(names[category]))
            for category in NUM_USERS}

  assert rates() == pytest.approx({c: u ** 0.3 for c, u in NUM_USERS.items()})
  try:
    mixtures.register_mixtures(data_dir, model, rate_exponent=1.0)
    assert rates() == pytest.approx({c: float(u)
                                     for c, u in NUM_USERS.items()})
  finally:
    mixtures.register_mixtures(data_dir, model)


@pytest.mark.slow
def test_stage1_batches_through_feature_converter(data):
  ds = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, LENGTHS, dataset_split="train", shuffle=True,
      seed=1, num_epochs=None,
      feature_converter=feature_converters.CALRecFeatureConverter())
  batch = next(ds.batch(16).as_numpy_iterator())
  assert set(batch) == set(feature_converters.CALRecFeatureConverter
                           .MODEL_FEATURES)
  for name, values in batch.items():
    length = 128 if name.startswith("item_") else 1024 + 128
    assert values.shape == (16, length), name
  # The item tower sees exactly the joint pass's loss tokens.
  for row in range(16):
    loss = batch["decoder_loss_weights"][row] == 1
    item = batch["item_pool_weights"][row] == 1
    assert (batch["decoder_target_tokens"][row][loss].tolist()
            == batch["item_input_tokens"][row][item].tolist())
    assert batch["history_pool_weights"][row].sum() > 0


def test_unfinished_preprocessing_output_is_refused(tmp_path, data):
  _, model, _, _ = data
  # Records and stats of a category, but no manifest: the job did not finish.
  tasks_testdata.write_category(tmp_path, "Arts", num_users=3, seed=0)
  with pytest.raises(FileNotFoundError,
                     match="preprocessing did not finish or this is not its "
                     "output folder"):
    mixtures.register_mixtures(tmp_path, model)


def test_categories_and_files_come_from_the_manifest(tmp_path, data):
  _, model, _, _ = data
  tasks_testdata.write_category(tmp_path, "Arts", num_users=3, seed=0,
                            splits=("train", "validation"))
  tasks_testdata.write_manifest(tmp_path)
  # Written after the manifest: not part of the run it describes.
  tasks_testdata.write_category(tmp_path, "Stray", num_users=3, seed=1)
  tasks_testdata.write_split(tmp_path, "Arts", "validation",
                         [("stray-user", ["Title: A.", "Title: B."])],
                         num_shards=2)
  assert tasks.register_tasks(tmp_path, model) == {"Arts": "calrec_arts"}
  ds = seqio.get_mixture_or_task("calrec_arts").get_dataset(
      LENGTHS, split="validation", shuffle=False)
  assert sorted(ex["user_id"].decode() for ex in ds.as_numpy_iterator()) == [
      f"Arts-user{u}" for u in range(3)]


def test_stage1_rates_need_stats_json(tmp_path):
  tasks_testdata.write_split(tmp_path, "Arts", "train", [("user", ["item"])])
  with pytest.raises(FileNotFoundError, match="stats.json"):
    mixtures.stage1_rates(tmp_path, ["Arts"])


def test_task_name_slugs():
  assert names.task_name("Industrial_and_Scientific") == (
      "calrec_industrial_and_scientific")
  assert names.task_name("CDs & Vinyl") == "calrec_cds_vinyl"


@pytest.mark.parametrize("split", ["train", "validation"])
def test_source_parses_records_as_seqio_does(data, split):
  data_dir, *_ = data
  split_to_files = tasks.read_categories(data_dir)["Mid Cat"]
  parsed = seqio.TFExampleDataSource(
      split_to_filepattern=split_to_files,
      feature_description=tasks.FEATURE_DESCRIPTION).get_dataset(
          split, shuffle=True, seed=3)
  ours = tasks.UserRecordSource(split_to_files).get_dataset(
      split, shuffle=True, seed=3)
  expected = list(parsed.as_numpy_iterator())
  found = list(ours.as_numpy_iterator())
  assert len(found) == len(expected) > 0
  max_cut = 4 if split == "train" else 0
  for record, want in zip(found, expected):
    assert record.pop("max_cut_items") == max_cut
    assert sorted(record) == sorted(want)
    for name, value in want.items():
      assert np.array_equal(record[name], value), name


def test_source_interleaves_many_files_in_blocks(tmp_path):
  """18 files (more than the 16 read at once) of 0 to 40 records: every
  record once, each file's in its order, 16 of a file in turn, the same
  order for the same seed and another for another seed."""
  counts = [(7 * shard) % 41 for shard in range(18)]
  for shard, count in enumerate(counts):
    tasks_testdata.write_split(
        tmp_path / f"shard{shard:02d}", "Cat", "train",
        [(f"u{shard}_{i}", [f"item {i}", f"item {i + 1}"])
         for i in range(count)])
  split_to_files = {"train": sorted(
      str(path) for path in tmp_path.glob("shard*/Cat/train-*.tfrecord"))}

  def user_ids(seed):
    source = tasks.UserRecordSource(split_to_files)
    return [record["user_id"].decode() for record in
            source.get_dataset("train", shuffle=True, seed=seed
                               ).as_numpy_iterator()]

  found = user_ids(5)
  assert user_ids(5) == found
  assert user_ids(6) != found
  by_file = collections.defaultdict(list)
  for user_id in found:
    by_file[user_id.split("_")[0]].append(user_id)
  assert by_file == {f"u{shard}": [f"u{shard}_{i}" for i in range(count)]
                     for shard, count in enumerate(counts) if count}
  last_of_file = {ids[-1] for ids in by_file.values()}
  for _, run in itertools.groupby(found, key=lambda id_: id_.split("_")[0]):
    run = list(run)
    assert len(run) % 16 == 0 or run[-1] in last_of_file, run
