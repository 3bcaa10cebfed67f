"""The prompt and item formats of paper section 3.2, character for character."""

from pipelines import templates

# The paper's example (section 3.2); its typographic apostrophe in "user's" is
# written as ASCII here and in the template.
PAPER_HISTORY = (
    ("The Hillman Group 591520 Small Wire Nail and Brad Assortment, 260-Pack",
     "Tools & Home Improvement", "Hillman", None),
    ("Pro Flex Super Flexible Elastomeric Sealant Acrylic Clear Paintable "
     "10 Oz", "Tools & Home Improvement", "Geocel", "$11.22"),
)
PAPER_PROMPT = (
    "This is the summary of a user's purchase history. The first item bought "
    "is as follows. Title: The Hillman Group 591520 Small Wire Nail and Brad "
    "Assortment, 260-Pack. Category: Tools & Home Improvement. Brand: Hillman. "
    "Price: Unknown.\n"
    "The next item bought is as follows. Title: Pro Flex Super Flexible "
    "Elastomeric Sealant Acrylic Clear Paintable 10 Oz. Category: Tools & Home "
    "Improvement. Brand: Geocel. Price: $11.22.\n"
    "The next item bought is as follows.")
PAPER_TARGET = (
    "Title: Trimaco Llc RF36 35-Inch by 166-Feet Rosin Flooring Paper, Red. "
    "Category: Tools & Home Improvement. Brand: Trimaco. Price: Unknown.")


def test_paper_prompt_character_for_character():
  history = [templates.item_text(*item) for item in PAPER_HISTORY]
  assert templates.user_prompt(history) == PAPER_PROMPT


def test_paper_target_round_trips_through_parser():
  text = templates.item_text(
      "Trimaco Llc RF36 35-Inch by 166-Feet Rosin Flooring Paper, Red",
      "Tools & Home Improvement", "Trimaco", "")
  assert text == PAPER_TARGET
  assert templates.parse_item_text(text).as_tuple() == (
      "Trimaco Llc RF36 35-Inch by 166-Feet Rosin Flooring Paper, Red",
      "Tools & Home Improvement", "Trimaco", "Unknown")
