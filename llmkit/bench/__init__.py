"""`llmkit bench`: runs listed in a bench file (recipe, overrides, seeds, and peer-baseline runs)
made through the same code path as `llmkit finetune`, summarised over seeds into bench.json,
bench.csv, bench.md and two plots, and checked against expectations and an earlier bench.

schema (the bench file) -> loading (the run matrix) -> runner (+ peer) -> aggregate -> checks ->
report, plots; `command` ties them together for the CLI."""
