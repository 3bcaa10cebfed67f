r"""A deterministic generator of Amazon-2018-format review and meta files.

  python -m experiments.sample_data --output_dir=DIR [--seed=0] \
      [--num_users=4000]

Writes the review and meta files that `pipelines/configs/sample.json` names,
and a `config.json` beside them for `python -m pipelines.preprocess` (the
shipped config works too, with `--data_dir=DIR`):

  category     role         users   meta format
  Electronics  stage1_only  35 %    2018 JSON
  CDs          validation   20 %    2018 JSON
  Games        eval         25 %    2018 JSON
  Pet          eval         20 %    2014 Python literals; sampled at 50 %

Structure a sequence model can learn and repeating the last item cannot:
items come in *product lines*, ordered chains of 4-6 items of one brand that
share a model or series name, e.g.

  Electronics: camera body -> zoom lens -> tripod -> bag -> memory card
  CDs:         "{Album} Vol. 1" -> "Vol. 2" -> ... (one artist's series)
  Games:       "{Series}" -> "{Series} II" -> "III" ...; console -> controller
  Pet:         puppy food 5 lb -> puppy 15 lb -> adult 15 lb -> adult 30 lb

A user walks a line from its first item (or a random early item) to its end,
then starts another line (lines have Zipf-like popularity), so given the last
item the next one is its successor in the line: a deterministic transition.
The last item of a line is only followed by a line start. Noise: 6 % of events
are an "impulse" item (cables, treats, ... bought at random) inserted in a
walk, after which the walk resumes, so the next item still follows from the
item two back. A sequence never ends on a lone line start. The
Last-Item-Repeater's query (the last item's text) ranks the last item itself
first and its siblings in the line (same brand and model words) next, without
knowing which sibling comes next; the target is almost never the last item.

A user walks until a length of 5 to 11 events is reached, possibly stopping
inside a line.

Dirt, as in the real files: 4 % of events are followed by one or two exact
copies (same item, text, rating and time: the paper's duplicates, about 5 %
of all purchases, as in its Table 1); 2 % of events are genuine repeats (the
same item again later, with another text); reviews are grouped by item like
the real files; a few extra lines are malformed, lack `reviewerID` or
`unixReviewTime`, or name an item without meta; meta rows repeat (identical or
sparser), titles and brands hold HTML entities and tags, some prices are CSS
or ranges, some titles, brands and prices are missing, and some meta rows
describe items nobody reviewed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import random
import sys
from typing import Any, Sequence

SAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                             "pipelines", "configs", "sample.json")

_DAY = 86400
_FIRST_DAY = 16071  # 2014-01-01.
_LAST_START_DAY = 17683  # 2018-06-01.

_BRAND_WORDS = ("Acme", "Northwind", "Kestrel", "Lumina", "Vantor", "Orbis",
                "Quill", "Solace", "Tundra", "Zephyr", "Halcyon", "Brisk",
                "Copperline", "Ember", "Fjord", "Granite", "Helix", "Ionic",
                "Juniper", "Kodiak", "Larch", "Meridian", "Nimbus", "Onyx",
                "Pioneer", "Quasar", "Redwood", "Summit", "Trident", "Umbra")
_NAME_WORDS = ("Crimson", "Silent", "Golden", "Hidden", "Electric", "Broken",
               "Endless", "Midnight", "Frozen", "Wild", "Distant", "Iron",
               "Velvet", "Hollow", "Burning", "Crystal", "Savage", "Lunar")
_NAME_NOUNS = ("Horizon", "Echoes", "Kingdom", "Rivers", "Machines", "Skies",
               "Legends", "Tides", "Frontier", "Empire", "Garden", "Voyage",
               "Circuit", "Harbor", "Shadows", "Dynasty", "Canyon", "Orbit")
_ROMAN = ("", "II", "III", "IV", "V", "VI")
_REVIEW_OPENERS = ("Works as described", "Great value", "Exactly what I needed",
                   "Arrived quickly", "Better than expected", "Solid quality",
                   "A bit pricey but worth it", "My family loves it",
                   "Does the job", "Would buy again")
_REVIEW_DETAILS = ("easy to set up", "the packaging was damaged", "fits well",
                   "sound is clear", "build feels sturdy", "colors are vivid",
                   "instructions were confusing", "battery lasts long",
                   "my dog loves it", "shipping took a week")


@dataclasses.dataclass(frozen=True)
class Family:
  """Title templates of one kind of product line, in purchase order.

  Placeholders: {brand}, {model} (e.g. "K240") and {name} (e.g. "Silent
  Harbor"); `prices` are the (low, high) dollars of each step.
  """

  steps: tuple[str, ...]
  prices: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class CategorySpec:
  """The products of one category of `configs/sample.json`."""

  name: str
  user_share: float
  top_category: str
  families: tuple[Family, ...]
  impulse: tuple[str, ...]
  meta_2014: bool = False


def _family(*steps_and_prices: tuple[str, tuple[int, int]]) -> Family:
  return Family(tuple(s for s, _ in steps_and_prices),
                tuple(p for _, p in steps_and_prices))


CATEGORIES = (
    CategorySpec(
        "Electronics", 0.35, "Electronics",
        (_family(("{brand} {model} 24MP Mirrorless Camera Body", (450, 900)),
                 ("{brand} {model} 18-55mm Zoom Lens", (150, 350)),
                 ("{brand} Carbon Fiber Tripod for {model} Cameras", (60, 140)),
                 ("{brand} {model} Camera Shoulder Bag", (30, 80)),
                 ("{brand} 128GB SD Memory Card for {model}", (20, 45)),
                 ("{brand} {model} Spare Battery Pack", (25, 60))),
         _family(("{brand} {model} 14-inch Laptop", (600, 1400)),
                 ("{brand} {model} Neoprene Laptop Sleeve", (15, 40)),
                 ("{brand} Wireless Mouse for {model} Laptops", (20, 50)),
                 ("{brand} USB-C Docking Hub for {model}", (40, 120)),
                 ("{brand} {model} 27-inch Companion Monitor", (180, 400))),
         _family(("{brand} {model} Bluetooth Bookshelf Speaker", (80, 250)),
                 ("{brand} {model} Speaker Floor Stands", (40, 90)),
                 ("{brand} {model} Matching Subwoofer", (150, 400)),
                 ("{brand} {model} Audio Receiver", (200, 500)))),
        ("{brand} HDMI Cable 6 ft", "{brand} AA Batteries 24 Pack",
         "{brand} Screen Cleaning Kit", "{brand} Surge Protector Strip")),
    CategorySpec(
        "CDs", 0.20, "CDs & Vinyl",
        (_family(*[(f"{{name}} Vol. {i}", (9, 16)) for i in range(1, 6)]),
         _family(*[(f"{{name}} (Remastered) Disc {i}", (8, 14))
                   for i in range(1, 5)]),
         _family(("{name} Live Tour Part One", (10, 18)),
                 ("{name} Live Tour Part Two", (10, 18)),
                 ("{name} Live Tour Part Three", (10, 18)),
                 ("{name} Live Tour Encore", (10, 18)))),
        ("{brand} Greatest Love Songs Compilation", "{brand} Holiday Classics",
         "{brand} Relaxing Piano Collection")),
    CategorySpec(
        "Games", 0.25, "Video Games",
        (_family(*[(f"{{name}} {r}".strip(), (30, 60)) for r in _ROMAN[:5]]),
         _family(("{brand} {model} Game Console", (250, 450)),
                 ("{brand} {model} Wireless Controller", (40, 70)),
                 ("{brand} {model} Controller Charging Dock", (20, 35)),
                 ("{brand} {model} Gaming Headset", (50, 120)),
                 ("{brand} {model} Console Carrying Case", (20, 45)))),
        ("{brand} Digital Gift Card", "{brand} Gaming Mouse Pad",
         "{brand} Thumb Grip Caps")),
    CategorySpec(
        "Pet", 0.20, "Pet Supplies",
        (_family(("{brand} Puppy Formula Dry Dog Food 5 lb", (12, 20)),
                 ("{brand} Puppy Formula Dry Dog Food 15 lb", (30, 45)),
                 ("{brand} Adult Formula Dry Dog Food 15 lb", (30, 45)),
                 ("{brand} Adult Formula Dry Dog Food 30 lb", (50, 75)),
                 ("{brand} Senior Formula Dry Dog Food 30 lb", (50, 75))),
         _family(("{brand} Kitten Starter Kit", (20, 40)),
                 ("{brand} Kitten Formula Cat Food 3 lb", (10, 18)),
                 ("{brand} Covered Cat Litter Box", (25, 50)),
                 ("{brand} Clumping Cat Litter 20 lb", (12, 22)),
                 ("{brand} Cat Scratching Post", (20, 45))),
         _family(("{brand} 20 Gallon Aquarium Starter Kit", (80, 150)),
                 ("{brand} Aquarium Power Filter", (20, 45)),
                 ("{brand} Submersible Aquarium Heater", (15, 35)),
                 ("{brand} Tropical Fish Flakes", (5, 12)),
                 ("{brand} Aquarium Water Conditioner", (6, 14)))),
        ("{brand} Dog Chew Treats", "{brand} Catnip Toy Mice",
         "{brand} Pet Grooming Brush"),
        meta_2014=True),
)

# Rates of the noise and dirt described in the module docstring.
IMPULSE_RATE = 0.06
DUPLICATE_RATE = 0.04
GENUINE_REPEAT_RATE = 0.02
EARLY_START_RATE = 0.3
BAD_LINE_RATE = 0.002
META_REPEAT_RATE = 0.03
UNREVIEWED_META_RATE = 0.1
USERS_PER_LINE = 12
MIN_LINES = 40


@dataclasses.dataclass
class Item:
  """A generated item: its meta attributes and product line."""

  asin: str
  title: str
  brand: str
  price: float
  line: int  # -1 for an impulse item.


def _price_text(rng: random.Random, price: float) -> Any:
  """The meta `price` value, dirty at the documented rates."""
  roll = rng.random()
  if roll < 0.08:
    return ""
  if roll < 0.09:
    return ".a-color-price{color:#B12704}#price .a-text-strike{color:gray}"
  if roll < 0.10:
    return f"${price:.2f} - ${price * 1.4:.2f}"
  return f"${price:.2f}"


def _dirty(rng: random.Random, text: str) -> str:
  """Adds HTML entities or tags to about 4 % of texts."""
  roll = rng.random()
  if roll < 0.02:
    return f"{text} &amp; More"
  if roll < 0.04:
    return f"<b>{text}</b>"
  return text


class _Generator:
  """Builds one category's items, users, review lines and meta lines."""

  def __init__(self, spec: CategorySpec, num_users: int, seed: int,
               index: int):
    self.spec = spec
    self.rng = random.Random(f"{seed}:{spec.name}")
    self.prefix = f"B{index}"
    self.items: list[Item] = []
    self.lines: list[list[Item]] = []
    self.impulse: list[Item] = []
    self.num_users = num_users
    self._make_items(max(MIN_LINES, num_users // USERS_PER_LINE))

  def _asin(self) -> str:
    return f"{self.prefix}{len(self.items):08d}"

  def _add(self, title: str, brand: str, price: float, line: int) -> Item:
    item = Item(self._asin(), title, brand, price, line)
    self.items.append(item)
    return item

  def _make_items(self, num_lines: int) -> None:
    rng = self.rng
    used = set()
    while len(self.lines) < num_lines:
      family = rng.choice(self.spec.families)
      brand = rng.choice(_BRAND_WORDS)
      model = f"{brand[0]}{rng.randint(100, 999)}"
      name = f"{rng.choice(_NAME_WORDS)} {rng.choice(_NAME_NOUNS)}"
      key = (family.steps[0], brand, model, name)
      if key in used:
        continue
      used.add(key)
      line_items = []
      for step, (low, high) in zip(family.steps, family.prices):
        title = step.format(brand=brand, model=model, name=name)
        price = rng.randint(low, high) - 0.01
        line_items.append(self._add(title, brand, price, len(self.lines)))
      self.lines.append(line_items)
    for _ in range(max(8, num_lines // 4)):
      brand = rng.choice(_BRAND_WORDS)
      title = rng.choice(self.spec.impulse).format(brand=brand)
      self.impulse.append(self._add(title, brand, rng.randint(3, 30) - 0.01,
                                    -1))
    # Zipf-like popularity of lines.
    self.line_weights = [1.0 / (rank + 1) ** 0.8
                         for rank in range(len(self.lines))]

  def _walk(self, length: int) -> list[Item]:
    """Product-line walks with impulse items, ending inside a line."""
    rng = self.rng
    items: list[Item] = []
    last_segment = 0
    while len(items) < length:
      line = rng.choices(self.lines, weights=self.line_weights)[0]
      start = (rng.randrange(len(line) // 2 + 1)
               if rng.random() < EARLY_START_RATE else 0)
      last_segment = 0
      for item in line[start:]:
        if len(items) >= length:
          break
        if items and rng.random() < IMPULSE_RATE:
          items.append(rng.choice(self.impulse))
        items.append(item)
        last_segment += 1
    if last_segment == 1 and len(items) > 2:
      items.pop()  # Never end on a lone line start (or the impulse before).
      while items[-1].line < 0 and len(items) > 2:
        items.pop()
    return items

  def users(self) -> list[list[dict[str, Any]]]:
    """Every user's review records, chronological, with duplicates."""
    rng = self.rng
    out = []
    for u in range(self.num_users):
      user_id = f"A{self.prefix}{u:07d}{rng.choice('XYZQ')}"
      day = rng.randint(_FIRST_DAY, _LAST_START_DAY)
      reviews = []
      for item in self._walk(rng.randint(5, 11)):
        day += rng.randint(1, 45)
        review = self._review(user_id, item, day)
        reviews.append(review)
        if rng.random() < DUPLICATE_RATE:
          reviews.extend(dict(review) for _ in range(rng.choice((1, 1, 2))))
        if rng.random() < GENUINE_REPEAT_RATE:
          day += rng.randint(1, 30)
          reviews.append(self._review(user_id, item, day))
      out.append(reviews)
    return out

  def _review(self, user_id: str, item: Item, day: int) -> dict[str, Any]:
    rng = self.rng
    text = (f"{rng.choice(_REVIEW_OPENERS)}, {rng.choice(_REVIEW_DETAILS)}. "
            f"{rng.choice(_REVIEW_DETAILS).capitalize()}.")
    return {"overall": float(rng.choice((5, 5, 5, 4, 4, 3, 2, 1))),
            "verified": rng.random() < 0.9, "reviewerID": user_id,
            "asin": item.asin, "reviewerName": f"Shopper {user_id[-4:]}",
            "reviewText": text, "summary": rng.choice(_REVIEW_OPENERS),
            "unixReviewTime": day * _DAY}

  def review_lines(self) -> list[str]:
    """Review lines grouped by item like the real files, plus bad lines."""
    rng = self.rng
    records = [r for reviews in self.users() for r in reviews]
    records.sort(key=lambda r: (r["asin"], -r["unixReviewTime"],
                                r["reviewerID"]))
    lines = [json.dumps(r) for r in records]
    for _ in range(max(3, int(len(lines) * BAD_LINE_RATE))):
      good = rng.choice(records)
      kind = rng.randrange(4)
      if kind == 0:
        bad = json.dumps(good)[:rng.randint(5, 60)]  # Truncated.
      elif kind in (1, 2):
        field = "reviewerID" if kind == 1 else "unixReviewTime"
        bad = json.dumps({k: v for k, v in good.items() if k != field})
      else:
        bad = json.dumps(dict(good, asin=f"{self.prefix}X{rng.randint(0, 99)}"))
      lines.insert(rng.randrange(len(lines) + 1), bad)
    return lines

  def _meta_record(self, item: Item) -> dict[str, Any]:
    rng = self.rng
    title = _dirty(rng, item.title) if rng.random() > 0.01 else ""
    brand = _dirty(rng, item.brand) if rng.random() > 0.05 else ""
    breadcrumbs = [self.spec.top_category, item.title.split()[-1]]
    if self.spec.meta_2014:
      record = {"asin": item.asin, "categories": [breadcrumbs],
                "salesRank": {self.spec.top_category: rng.randint(1, 99999)}}
      if title:
        record["title"] = title
      if brand:
        record["brand"] = brand
      if rng.random() > 0.1:
        record["price"] = item.price
      return record
    return {"category": breadcrumbs, "description": [], "title": title,
            "brand": brand, "feature": [], "main_cat": self.spec.top_category,
            "price": _price_text(rng, item.price), "asin": item.asin}

  def meta_lines(self) -> list[str]:
    rng = self.rng
    items = list(self.items)
    for _ in range(int(len(items) * UNREVIEWED_META_RATE)):
      brand = rng.choice(_BRAND_WORDS)
      items.append(self._add(rng.choice(self.spec.impulse).format(brand=brand)
                             + " (Discontinued)", brand, 9.99, -1))
    records = [self._meta_record(item) for item in items]
    for record in rng.sample(records, int(len(records) * META_REPEAT_RATE)):
      sparser = {k: v for k, v in record.items()
                 if k not in ("brand", "price")}
      records.append(dict(record) if rng.random() < 0.5 else sparser)
    rng.shuffle(records)
    dump = repr if self.spec.meta_2014 else json.dumps
    lines = [dump(r) for r in records]
    lines.insert(rng.randrange(len(lines)), '{"asin": "broken", "title": ')
    return lines


def _write_lines(path: str, lines: Sequence[str], compress: bool) -> None:
  data = ("\n".join(lines) + "\n").encode("utf-8")
  with open(path, "wb") as f:
    # mtime=0 keeps the gzip header, and so the file, a function of the seed.
    f.write(gzip.compress(data, compresslevel=6, mtime=0) if compress else data)


def _sample_config() -> dict[str, Any]:
  with open(SAMPLE_CONFIG) as f:
    return json.load(f)


def eval_category_names() -> list[str]:
  """The sample's categories with the eval role (Stage II and test)."""
  return [category["name"] for category in _sample_config()["categories"]
          if category["role"] == "eval"]


def generate(output_dir: str, seed: int = 0, num_users: int = 4000,
             compress: bool = True) -> dict[str, Any]:
  """Writes the files of `configs/sample.json` and a config.json for them."""
  os.makedirs(output_dir, exist_ok=True)
  config = _sample_config()
  specs = {spec.name: spec for spec in CATEGORIES}
  for index, category in enumerate(config["categories"]):
    spec = specs[category["name"]]
    users = max(20, round(num_users * spec.user_share))
    generator = _Generator(spec, users, seed, index)
    if not compress:
      for key in ("reviews", "meta"):
        category[key] = category[key].removesuffix(".gz")
    review_lines = generator.review_lines()
    _write_lines(os.path.join(output_dir, category["reviews"]), review_lines,
                 compress)
    _write_lines(os.path.join(output_dir, category["meta"]),
                 generator.meta_lines(), compress)
    print(f"{spec.name}: {users} users, {len(review_lines)} review lines, "
          f"{len(generator.items)} meta items", file=sys.stderr)
    category["num_shards"] = 1 + users // 5000
  config.update(sampling_seed=seed, data_dir=".")
  with open(os.path.join(output_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
  return config


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog="python -m experiments.sample_data",
      description=("Writes a deterministic sample of Amazon-2018-format "
                   "review and meta files for four categories covering the "
                   "three roles, and config.json for pipelines.preprocess."))
  parser.add_argument("--output_dir", required=True,
                      help="folder to write the files and config.json into")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of every random choice (default 0)")
  parser.add_argument("--num_users", type=int, default=4000,
                      help=("users over all categories before sampling "
                            "(default 4000; about 9 review lines each)"))
  parser.add_argument("--nogzip", dest="compress", action="store_false",
                      help="write plain .json files instead of .json.gz")
  args = parser.parse_args(argv)
  if args.num_users < 80:
    parser.error(f"--num_users must be at least 80, got {args.num_users}")
  generate(args.output_dir, args.seed, args.num_users, args.compress)
  print(os.path.join(args.output_dir, "config.json"))


if __name__ == "__main__":
  main()
