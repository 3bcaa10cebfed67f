"""The training input of the real tasks checkpoints and resumes exactly.

The Stage-I mixture (sample_from_datasets over two categories' TFRecords),
the shuffle buffers and the stateless augmentation of
`tasks.preprocessors.cut_last_items`, read as one of two processes.
"""

from etils import epath
import numpy as np
import pytest
import seqio
import tasks_testdata
import tensorflow as tf

from tasks import mixtures
from trainer import checkpoints
from trainer import train_inputs

LENGTHS = {"inputs": 256, "targets": 64}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  for seed, category in enumerate(["Tools", "Pets"]):
    tasks_testdata.write_category(data_dir, category, num_users=30,
                                    seed=seed, num_shards=2)
  tasks_testdata.write_manifest(data_dir)
  mixtures.register_mixtures(
      data_dir, tasks_testdata.train_test_vocabulary(data_dir / "v.model"))


def _dataset():
  return train_inputs._dataset(  # pylint: disable=protected-access
      mixtures.STAGE1_MIXTURE, LENGTHS,
      train_inputs.default_feature_converter_cls()(pack=False), "train",
      shuffle=True, seed=1, num_epochs=None, batch_size=4,
      shard_info=seqio.ShardInfo(1, 2))


def _batches():
  return _dataset().as_numpy_iterator()


def test_input_options_change_the_speed_not_the_stream(registered):
  """The trainer's tf.data options (autotuning off, one thread per op) give
  the batches seqio gives with tf.data's defaults."""
  del registered
  ours = _dataset()
  assert ours.options().autotune.enabled is False
  assert ours.options().threading.max_intra_op_parallelism == 1
  defaults = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, task_feature_lengths=LENGTHS,
      feature_converter=train_inputs.default_feature_converter_cls()(
          pack=False),
      dataset_split="train", shuffle=True, num_epochs=None, seed=1,
      batch_size=4, shard_info=seqio.ShardInfo(1, 2))
  assert defaults.options().autotune.enabled is not False
  for batch, expected in zip(ours.take(12).as_numpy_iterator(),
                             defaults.take(12).as_numpy_iterator()):
    for k in batch:
      np.testing.assert_array_equal(batch[k], expected[k], err_msg=k)


@pytest.mark.slow
def test_restored_input_continues_the_straight_stream(registered, tmp_path):
  del registered
  batches = _batches()
  straight = [next(batches) for _ in range(12)]

  saved = _batches()
  for _ in range(5):
    next(saved)
  handler = checkpoints.DatasetIteratorHandler()
  directory = epath.Path(tmp_path)
  handler.save(directory, checkpoints.DatasetIteratorSave(saved))
  assert (directory / "process_0-of-1.index").exists()
  restored = _batches()
  handler.restore(directory, checkpoints.DatasetIteratorRestore(restored))
  for expected in straight[5:]:
    batch = next(restored)
    for k in expected:
      np.testing.assert_array_equal(batch[k], expected[k], err_msg=k)


def test_restore_needs_the_saving_process_count(tmp_path):
  iterator = iter(tf.data.Dataset.range(5))
  handler = checkpoints.DatasetIteratorHandler()
  directory = epath.Path(tmp_path)
  handler.save(directory, checkpoints.DatasetIteratorSave(iterator))
  for path in directory.glob("process_0-of-1.*"):
    path.rename(directory / path.name.replace("-of-1", "-of-2"))
  with pytest.raises(ValueError, match=r"only for \['process_0-of-2'\]"):
    handler.restore(directory, checkpoints.DatasetIteratorRestore(iterator))
