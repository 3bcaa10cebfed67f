"""Names of the seqio tasks and mixtures (paper section 3.3), free of TF.

`calrec_{category}`: the category folder name lowercased, every run of other
characters than letters and digits replaced by "_", e.g. `CDs` -> `calrec_cds`,
`Industrial_and_Scientific` -> `calrec_industrial_and_scientific`.
`calrec_stage1`: the Stage-I mixture of every category's train split.
"""

import re

STAGE1_MIXTURE = "calrec_stage1"


def task_name(category: str) -> str:
  """`calrec_{category}`, lowercased, non-alphanumeric runs -> "_"."""
  slug = re.sub(r"[^0-9a-z]+", "_", category.lower()).strip("_")
  if not slug:
    raise ValueError(f"Category {category!r} has no letters or digits.")
  return f"calrec_{slug}"
