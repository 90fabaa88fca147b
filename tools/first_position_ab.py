"""What the last layer computing only the classifier's position saves (llmkit/models/first_position.py),
measured in one process that alternates the layer's two forwards on the same model and batches:
this machine's speed drifts within minutes, so only a ratio measured this way is read.

    .venv/bin/python tools/first_position_ab.py train recipes/sst2-minilm-full.yaml
    .venv/bin/python tools/first_position_ab.py predict recipes/sst2-minilm-prompt.yaml

The model, method and data are the recipe's (its checkpoint, model.dropout and method settings).
`train`: forward and backward of batches of 32 random training rows (as a random sampler makes
them); `predict`: inference over the dev rows sorted by length in batches of 64 (as `llmkit
predict` makes them). It prints one JSON line: ms per round for each side and their ratio.
docs/bench-sst2-expert-cpu.md has the figures measured with it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from llmkit.methods import get_method
from llmkit.models.first_position import compute_every_position, compute_only_first_position
from llmkit.models.loading import load_classifier
from llmkit.recipe.loading import load_recipe


def sentences(path: Path | str | None) -> list[str]:
    """The sentences of an SST-2 file (label<TAB>sentence, a header line)."""
    assert path is not None, "the recipe names no such file"
    return [line.split("\t")[1] for line in Path(path).read_text(encoding="utf-8").splitlines()[1:]]


def recipe_model(path: Path) -> tuple[Any, Any, Any]:
    """The recipe, its loaded checkpoint (a 2-label classifier, seeded head) and the model its
    method wraps it into."""
    recipe = load_recipe(path)
    set_seed(0)
    loaded = load_classifier(
        recipe.model.checkpoint, ["negative", "positive"], recipe.model.revision, dropout=recipe.model.dropout
    )
    return recipe, loaded, get_method(recipe.method.name).wrap(loaded.model, recipe.method, loaded.traits)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("train", "predict"))
    parser.add_argument("recipe", type=Path, help="an SST-2 recipe of a BERT-style model")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    recipe, loaded, model = recipe_model(args.recipe)
    # Only a BERT-style classifier has the shortcut to compare (llmkit gave it one on loading).
    assert compute_only_first_position(loaded.model), "the recipe's model is not a BERT-style classifier"

    def tokenized(rows: list[str]) -> dict[str, Any]:
        encoded = loaded.tokenizer(rows, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return dict(encoded)

    if args.mode == "train":
        model.train()
        rng = random.Random(0)
        pool = sentences(recipe.data.train_file)[:3000]
        batches = [tokenized(rng.sample(pool, 32)) for _ in range(12)]
        for batch in batches:
            batch["labels"] = torch.randint(0, 2, (len(batch["input_ids"]),))
    else:
        model.eval()
        rows = sorted(sentences(recipe.data.validation_file), key=len)
        batches = [tokenized(rows[start : start + 64]) for start in range(0, len(rows), 64)]

    def one_round(first_only: bool) -> float:
        if first_only:
            compute_only_first_position(loaded.model)
        else:
            compute_every_position(model)
        start = time.perf_counter()
        for batch in batches:
            if args.mode == "train":
                model(**batch).loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode():
                    model(**batch)
        return (time.perf_counter() - start) * 1000

    one_round(True), one_round(False)  # warm-up
    times: dict[str, list[float]] = {"every_position_ms": [], "first_position_ms": []}
    for _ in range(args.rounds):
        times["every_position_ms"].append(one_round(False))
        times["first_position_ms"].append(one_round(True))
    ratio = sum(times["every_position_ms"]) / sum(times["first_position_ms"])
    rounded = {name: [round(value) for value in values] for name, values in times.items()}
    print(json.dumps({"mode": args.mode, "recipe": str(args.recipe), **rounded, "speedup": round(ratio, 3)}))


if __name__ == "__main__":
    main()
