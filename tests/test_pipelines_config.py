"""Tests of the config files: the shipped ones and validation messages."""

import json
import os

import conftest
import pytest

from pipelines import config as config_lib
from pipelines import sequences

CONFIGS = conftest.REPO_ROOT / "pipelines" / "configs"


def test_paper_config_has_the_14_categories_and_roles_of_section_4():
  config = config_lib.load_config(str(CONFIGS / "amazon2018_paper.json"),
                                  data_dir="/data")
  roles = {c.name: c.role for c in config.categories}
  assert len(roles) == 14
  assert sorted(n for n, r in roles.items()
                if r == sequences.Role.STAGE1_ONLY) == [
                    "Automotive", "Cell_Phones", "Clothing", "Electronics",
                    "Grocery", "Home", "Movies"]
  assert [n for n, r in roles.items()
          if r == sequences.Role.VALIDATION] == ["CDs"]
  assert sorted(n for n, r in roles.items() if r == sequences.Role.EVAL) == [
      "Arts", "Games", "Instruments", "Office", "Pet", "Scientific"]
  fractions = {c.name: c.user_fraction for c in config.categories
               if c.user_fraction < 1}
  assert fractions == {"Office": 0.5, "Pet": 0.2}
  office = next(c for c in config.categories if c.name == "Office")
  assert office.reviews == ("/data/Office_Products_5.json.gz",)
  assert office.meta == ("/data/meta_Office_Products.json.gz",)


def test_sample_config_covers_every_role():
  config = config_lib.load_config(str(CONFIGS / "sample.json"))
  assert {c.role for c in config.categories} == set(sequences.Role)


def _raw(**category):
  entry = {"name": "Games", "reviews": "r.json", "meta": ["m1.json",
                                                          "m2.json"],
           "role": "eval"}
  entry.update(category)
  return {"categories": [entry]}


def test_relative_patterns_resolve_against_data_dir_then_config_dir():
  config = config_lib.parse_config(_raw(), "/cfg")
  assert config.categories[0].reviews == ("/cfg/r.json",)
  assert config.categories[0].meta == ("/cfg/m1.json", "/cfg/m2.json")
  raw = dict(_raw(), data_dir="../data")
  assert config_lib.parse_config(raw, "/cfg").categories[0].reviews == (
      "/data/r.json",)
  assert config_lib.parse_config(raw, "/cfg", "/x").categories[0].reviews == (
      "/x/r.json",)
  absolute = _raw(reviews=os.path.abspath("/abs/r.json"))
  assert config_lib.parse_config(absolute, "/cfg").categories[0].reviews == (
      "/abs/r.json",)


def test_patterns_under_a_url_are_normalised_keeping_the_scheme():
  """GCS names objects by the whole string: gs://b/in/./x is not gs://b/in/x."""
  raw = dict(_raw(reviews="./sub/../r.json"), data_dir=".")
  config = config_lib.parse_config(raw, "gs://bucket/cfg")
  assert config.categories[0].reviews == ("gs://bucket/cfg/r.json",)
  assert config.categories[0].meta == ("gs://bucket/cfg/m1.json",
                                       "gs://bucket/cfg/m2.json")
  raw["data_dir"] = "../in/"
  assert config_lib.parse_config(raw, "gs://bucket/cfg").categories[
      0].reviews == ("gs://bucket/in/r.json",)
  assert config_lib.parse_config(raw, "/cfg", "gs://bucket/in/.").categories[
      0].reviews == ("gs://bucket/in/r.json",)
  sample = config_lib.parse_config(
      json.loads((CONFIGS / "sample.json").read_text()), "gs://bucket/in")
  assert all(path.startswith("gs://bucket/in/") and "/./" not in path
             for category in sample.categories
             for path in category.reviews + category.meta)
  # Another bucket, or the root of the store, is not a relative path's place.
  for reviews in ("../../other/r.json", "/abs/r.json"):
    with pytest.raises(config_lib.ConfigError, match="is outside gs://bucket"):
      config_lib.parse_config(_raw(reviews=reviews), "/cfg", "gs://bucket/in")


@pytest.mark.parametrize("raw,message", [
    ([], "must be a JSON object"),
    ({"categories": []}, "non-empty list"),
    ({"categories": [], "seed": 1}, "unknown top-level keys"),
    (_raw(role="test"), "'role' must be one of"),
    (_raw(name="Bad Name"), "must match"),
    (_raw(user_fraction=0), r"'user_fraction' must be in \(0, 1\]"),
    (_raw(user_fraction=1.5), "'user_fraction'"),
    (_raw(num_shards=0), "'num_shards' must be an integer >= 1"),
    (_raw(reviews=[]), "'reviews' must be a file pattern"),
    (_raw(meta=None), "'meta' must be a file pattern"),
    (_raw(fraction=1), "unknown keys"),
    ({"categories": _raw()["categories"] * 2}, "repeated: \\['Games'\\]"),
])
def test_invalid_configs_say_what_to_fix(raw, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse_config(raw, "/cfg")


def test_load_config_reports_unreadable_and_invalid_files(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="cannot read config"):
    config_lib.load_config(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match="not valid JSON"):
    config_lib.load_config(str(bad))
  good = tmp_path / "good.json"
  good.write_text(json.dumps(_raw()))
  assert config_lib.load_config(str(good)).categories[0].reviews == (
      str(tmp_path / "r.json"),)


def test_an_unreadable_config_path_is_not_called_bad_json():
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load_config("gss://bucket/config.json")
  assert str(error.value).startswith(
      "cannot read config gss://bucket/config.json: Unable to get filesystem")
