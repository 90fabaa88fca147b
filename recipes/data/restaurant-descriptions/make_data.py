"""Writes train.csv and validation.csv: small restaurant descriptions from meaning
representations in the E2E format (`mr,ref`, two references per input), written for llmkit's
generation examples. Deterministic: `python make_data.py` rewrites the same files."""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

NAMES = ["The Eagle", "Blue Spice", "The Mill", "Green Man", "Loch Fyne", "Zizzi", "Aromi", "Cotto"]
FOODS = ["French", "Italian", "Indian", "Chinese", "English"]
AREAS = ["city centre", "riverside"]
FAMILY = {"yes": "family-friendly", "no": "not family-friendly"}


def references(name: str, food: str, area: str, family: str) -> list[str]:
    friendly = FAMILY[family]
    return [
        f"{name} serves {food} food in the {area} and is {friendly}.",
        f"In the {area}, {name} is a {friendly} place serving {food} food.",
    ]


def main() -> None:
    here = Path(__file__).parent
    inputs = list(itertools.product(NAMES, FOODS, AREAS, FAMILY))
    random.Random(0).shuffle(inputs)
    splits = {"validation": inputs[:20], "train": inputs[20:120]}
    for split, chosen in splits.items():
        with (here / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["mr", "ref"])
            for name, food, area, family in chosen:
                mr = f"name[{name}], food[{food}], area[{area}], familyFriendly[{family}]"
                for ref in references(name, food, area, family):
                    writer.writerow([mr, ref])


if __name__ == "__main__":
    main()
