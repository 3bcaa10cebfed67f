"""The Stage-I mixture (paper section 3.3) and task registration.

`calrec_stage1` mixes the train split of every category that the manifest.json
of a preprocessing output lists, category c sampled at a rate proportional to
|U_c|^0.3, |U_c| the number of users of c (`num_users` of
`{category}/stats.json`). Stage II trains on the category's own task,
`calrec_{category}` (`tasks.tasks`).

Register both for a data folder and a SentencePiece model:

  import tasks.mixtures
  tasks.mixtures.register_mixtures(data_dir, vocabulary_path)

or from gin (`register_mixtures.data_dir = ...`, then call it without
arguments), or by setting the environment variables `CALREC_DATA_DIR` and
`CALREC_VOCABULARY` before `import tasks.mixtures` (what seqio's
`--module_import=tasks.mixtures` and t5x's `MIXTURE_OR_TASK_MODULE` need).
"""

from __future__ import annotations

import json
import os

import gin
import seqio
import tensorflow as tf

from tasks import names
from tasks import tasks

STAGE1_MIXTURE = names.STAGE1_MIXTURE
# Paper section 3.3, after Xue et al. (2021).
RATE_EXPONENT = 0.3

DATA_DIR_ENV = "CALREC_DATA_DIR"
VOCABULARY_ENV = "CALREC_VOCABULARY"


def num_users(data_dir: str | os.PathLike[str], category: str) -> int:
  """|U| of a category, from its stats.json."""
  path = os.path.join(os.fspath(data_dir), category, "stats.json")
  try:
    with tf.io.gfile.GFile(path) as f:
      users = json.load(f)["num_users"]
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(
        f"{path} is missing; the Stage-I rates need every category's "
        "stats.json (written by `python -m pipelines.preprocess`).") from e
  except KeyError as e:
    raise ValueError(f"{path} has no 'num_users'.") from e
  if not isinstance(users, int) or users <= 0:
    raise ValueError(f"{path}: 'num_users' must be a positive integer, got "
                     f"{users!r}.")
  return users


def stage1_rates(data_dir: str | os.PathLike[str], categories: list[str],
                 exponent: float = RATE_EXPONENT) -> dict[str, float]:
  """Category -> |U|^exponent (unnormalised; seqio normalises)."""
  return {category: float(num_users(data_dir, category)) ** exponent
          for category in categories}


@gin.configurable
def register_mixtures(data_dir: str | os.PathLike[str] = gin.REQUIRED,
                      vocabulary_path: str | os.PathLike[str] = gin.REQUIRED,
                      rate_exponent: float = RATE_EXPONENT,
                      augmentation_seed: int = 0) -> dict[str, str]:
  """Registers the category tasks and `calrec_stage1` for data_dir.

  Args:
    data_dir: output folder of a completed `python -m pipelines.preprocess`
      run (with its manifest.json).
    vocabulary_path: a SentencePiece model or a byte-level BPE
      vocabulary.json (`tasks.vocab.get_vocabulary`).
    rate_exponent: Stage-I rates are |U|^rate_exponent.
    augmentation_seed: seed of the training augmentation, fixed here (the
      trainer's gin binds it to RANDOM_SEED) and independent of
      `get_dataset`'s seed, so that the cuts hold no random state and a
      resumed run repeats them (`tasks.tasks` module docstring).

  Returns:
    Category folder name -> task name.
  """
  task_names = tasks.register_tasks(data_dir, vocabulary_path,
                                    augmentation_seed)
  trained = [category for category, name in task_names.items()
             if tasks.TRAIN_SPLIT in seqio.TaskRegistry.get(name).splits]
  rates = stage1_rates(data_dir, trained, rate_exponent)
  seqio.MixtureRegistry.remove(STAGE1_MIXTURE)
  seqio.MixtureRegistry.add(
      STAGE1_MIXTURE,
      [(task_names[category], rate) for category, rate in rates.items()])
  return task_names


if os.environ.get(DATA_DIR_ENV) and os.environ.get(VOCABULARY_ENV):
  register_mixtures(os.environ[DATA_DIR_ENV], os.environ[VOCABULARY_ENV])
