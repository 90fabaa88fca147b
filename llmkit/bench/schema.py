"""The bench file schema: which runs to make (recipe, overrides, seeds), which peer-baseline runs
to set beside them, what each run is expected to reach, and the tolerances for `--baseline`.

Paths in a bench file (recipes, the peer script, data-file overrides) are relative to the bench
file, as data paths in a recipe are relative to the recipe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    field_validator,
    model_validator,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The recipe keys a peer run may set for itself (a sweep of the peer's settings): those its
# script takes. Any other key would be silently ignored by the script.
PEER_OVERRIDE_KEYS = (
    "train.learning_rate", "train.epochs", "train.batch_size", "data.max_train_samples", "data.max_length",
)  # fmt: skip
# Where the hand-written baseline lives when a bench file does not say: beside the checkout,
# relative to the directory `llmkit bench` runs in (the repository root, under `make`).
DEFAULT_PEER_SCRIPT = Path("../shared/bench/peer_trainer.py")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("seeds", check_fields=False)  # on every section with seeds: the bench and its runs
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return value


class Expectations(Section):
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Every seed's validation accuracy (token accuracy for token classification) is at "
        "least this.",
    )
    min_f1: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Every seed's validation F1 (entity F1 for token classification) is at least this.",
    )
    min_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Every seed's validation figures by the task's metric names are at least these, "
        "e.g. {bleu: 20, rouge_l: 0.4} for generation (BLEU 0-100, ROUGE-L and exact match 0-1).",
    )
    min_speed_ratio: PositiveFloat | None = Field(
        None,
        description="Mean train samples/s divided by the speed_reference run's is at least this.",
    )
    speed_reference: str | None = Field(
        None,
        description="The run min_speed_ratio compares with; default: the expert peer run of this run, "
        "else its plain peer run.",
    )
    max_peak_memory_mb: PositiveFloat | None = Field(
        None, description="Every seed's peak memory (MB) is at most this."
    )
    min_inference_ratio: PositiveFloat | None = Field(
        None,
        description="Prediction rows/s over the transformers pipeline's is at least this (needs "
        "measure_inference).",
    )

    by_precision: dict[Literal["fp32", "bf16", "fp16"], Expectations] | None = Field(
        None,
        description="Expectations that hold only when the run trains in that precision (train.precision "
        "resolved on this machine: auto is bf16 on CPUs with native bf16, fp32 elsewhere); they "
        "replace the same keys above. Speed ratios differ most: bf16 matmuls are twice fp32's on "
        "CPUs that have them.",
    )

    @model_validator(mode="after")
    def _reference_needs_ratio(self) -> Expectations:
        ratio = self.min_speed_ratio is not None or any(
            e.min_speed_ratio is not None for e in (self.by_precision or {}).values()
        )
        if self.speed_reference is not None and not ratio:
            raise ValueError("expect.speed_reference is only used with expect.min_speed_ratio")
        if any(e.by_precision is not None for e in (self.by_precision or {}).values()):
            raise ValueError("expect.by_precision holds plain expectations, not another by_precision")
        return self

    def for_precision(self, precision: str) -> Expectations:
        """The expectations that apply to a run training in `precision`."""
        specific = (self.by_precision or {}).get(precision)  # type: ignore[call-overload]
        merged = self.model_dump(exclude={"by_precision"})
        if specific is not None:
            merged.update(specific.model_dump(exclude={"by_precision"}, exclude_none=True))
        return Expectations(**merged)

    def sets(self, key: str) -> bool:
        """Whether `key` is expected here or for any precision."""
        return getattr(self, key) not in (None, {}) or any(
            getattr(e, key) not in (None, {}) for e in (self.by_precision or {}).values()
        )


class RunBase(Section):
    name: str | None = Field(None, description="Run name in tables and messages; default: derived.")
    expect: Expectations = Field(default_factory=Expectations)

    @field_validator("name")
    @classmethod
    def _usable_as_directory(cls, value: str | None) -> str | None:
        if value is not None and not RUN_NAME.match(value):
            raise ValueError(
                f"'{value}' is not a valid run name: use letters, digits, '.', '_' and '-' "
                "(it names the run's directory)"
            )
        return value


class LlmkitRun(RunBase):
    kind: Literal["llmkit"] = Field("llmkit", description="`llmkit finetune` of a recipe (the default).")
    recipe: Path = Field(description="Recipe file, relative to the bench file.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted recipe keys and values, e.g. {train.epochs: 1}; over the bench's overrides.",
    )
    seeds: list[int] | None = Field(
        None, description="train.seed of each repetition; default: the bench's seeds."
    )
    measure_inference: bool = Field(
        False,
        description="After the first seed's training: `llmkit predict`'s rows/s against a transformers "
        "pipeline('text-classification') on the same model (as plain transformers computes it), "
        "validation rows and batch size.",
    )
    uses: dict[str, str] = Field(
        default_factory=dict,
        description="Recipe keys set to another llmkit run's directory, e.g. {train.distill.teacher: "
        "teacher} for a student of the run named teacher, which must be listed before this one: its "
        "directory at this run's seed when it has that seed, else at its first.",
    )

    @model_validator(mode="after")
    def _inference_ratio_needs_measuring(self) -> LlmkitRun:
        if self.expect.sets("min_inference_ratio") and not self.measure_inference:
            raise ValueError("expect.min_inference_ratio needs measure_inference: true")
        return self

    @property
    def label(self) -> str:
        return self.name or self.recipe.stem


class PeerRun(RunBase):
    kind: Literal["peer"] = Field(description="The hand-written Trainer+PEFT baseline script.")
    like: str = Field(
        description="The llmkit run whose resolved recipe (model, data, rows, epochs, batch size, "
        "learning rate, max length, method) the peer script is given; it runs once per seed of it."
    )
    seeds: list[int] | None = Field(
        None,
        description="Only at these seeds of the like run (default: all). The script fixes its own "
        "seed, so repetitions measure only its timing noise.",
    )
    script: Path | None = Field(
        None,
        description="This peer's script, relative to the bench file (a bench with runs of several "
        "tasks: each task has its peer, e.g. peer_ner.py); default: the bench's peer_script.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="This peer's own settings over the like run's recipe, for a sweep of the peer "
        f"(time to target): {', '.join(PEER_OVERRIDE_KEYS)}. A peer with overrides trains "
        "something else than its like run, so its speed is not a ratio's reference.",
    )
    expert: bool = Field(
        False,
        description="The expert peer: the script with what a user who knows Trainer turns on by hand "
        "(length-grouped batches, --group-by-length, for the classification tasks; bf16, --bf16, "
        "where the like run trains in bf16). A run's speed ratio is computed against its expert "
        "peer when it has one; a run may have one plain and one expert peer.",
    )

    @field_validator("overrides")
    @classmethod
    def _keys_the_script_takes(cls, value: dict[str, Any]) -> dict[str, Any]:
        other = [key for key in value if key not in PEER_OVERRIDE_KEYS]
        if other:
            raise ValueError(
                f"a peer run's overrides set what its script takes ({', '.join(PEER_OVERRIDE_KEYS)}); "
                f"not {', '.join(other)}"
            )
        return value

    @property
    def label(self) -> str:
        return self.name or f"{self.like}-{'expert-peer' if self.expert else 'peer'}"


class UntunedRun(RunBase):
    kind: Literal["untuned"] = Field(
        description="The like run's model evaluated without training: the floor training must rise above."
    )
    like: str = Field(
        description="The llmkit run whose resolved recipe (model, data, evaluation settings) is "
        "evaluated as loaded, before any method or training; it runs once, at that run's first seed "
        "(a classification head, initialised from it, scores about chance)."
    )

    @property
    def label(self) -> str:
        return self.name or f"{self.like}-untuned"


# Runs made from another run's recipe (`like:`).
DerivedRun = PeerRun | UntunedRun

if TYPE_CHECKING:
    BenchRun = LlmkitRun | PeerRun | UntunedRun
else:
    BenchRun = Annotated[Union[LlmkitRun, PeerRun, UntunedRun], Field(discriminator="kind")]  # noqa: UP007


class Tolerances(Section):
    accuracy: NonNegativeFloat = Field(0.02, description="Allowed drop of mean validation accuracy.")
    f1: NonNegativeFloat = Field(0.02, description="Allowed drop of mean validation F1.")
    speed: NonNegativeFloat = Field(
        0.15,
        description="Allowed relative drop of the speed ratio to the peer (of samples/s when either "
        "bench has no peer for the run).",
    )
    peak_memory: NonNegativeFloat = Field(0.1, description="Allowed relative rise of peak memory.")


class Bench(Section):
    name: str | None = Field(None, description="Bench name; default: the file name without .yaml.")
    peer_script: Path = Field(
        DEFAULT_PEER_SCRIPT,
        description="The peer baseline script, relative to the bench file (default: relative to "
        "the current directory).",
    )
    seeds: list[int] | None = Field(
        None, description="Seeds of every run that does not list its own; default: the recipe's train.seed."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted recipe keys and values applied to every run."
    )
    runs: list[BenchRun] = Field(min_length=1, description="The runs, in the order they are made.")
    tolerances: Tolerances = Field(
        default_factory=Tolerances, description="How far a run may fall behind --baseline."
    )
    time_to_target: dict[str, float] = Field(
        default_factory=dict,
        description="Validation targets, e.g. {accuracy: 0.85}: each run's training time (evaluation "
        "excluded) until it first reaches all of them: an llmkit run's first evaluation that does "
        "(eval.every_steps sets how often it evaluates), a peer's whole training when its final "
        "figures do. The table adds each llmkit run's time against its fastest peer's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults_to_llmkit(cls, data: Any) -> Any:
        runs = data.get("runs") if isinstance(data, dict) else None
        if isinstance(runs, list):
            for run in runs:
                if isinstance(run, dict):
                    run.setdefault("kind", "llmkit")
        return data

    @model_validator(mode="after")
    def _names_resolve(self) -> Bench:
        names = [run.label for run in self.runs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"run names must be distinct; used more than once: {', '.join(twice)} (give each a name:)"
            )
        kinds: dict[str, str] = {run.label: run.kind for run in self.runs}
        problems = []
        for run in self.runs:
            if isinstance(run, DerivedRun) and kinds.get(run.like) != "llmkit":
                problems.append(f"{run.label}: like: '{run.like}' {_not_an_llmkit_run(run.like, kinds)}")
            reference = run.expect.speed_reference
            if reference is not None and (reference not in kinds or reference == run.label):
                problems.append(
                    f"{run.label}: expect.speed_reference: '{reference}' is not another run of "
                    f"this bench (runs: {', '.join(names)})"
                )
            if (
                run.expect.sets("min_speed_ratio")
                and reference is None
                and not self.speed_peers_of(run.label)
            ):
                problems.append(
                    f"{run.label}: expect.min_speed_ratio needs expect.speed_reference (no peer run "
                    "is like this run)"
                )
        for position, run in enumerate(self.runs):
            if not isinstance(run, LlmkitRun):
                continue
            before = {r.label: r.kind for r in self.runs[:position]}
            for key, used in run.uses.items():
                if before.get(used) != "llmkit":
                    where = (
                        "is a peer run"
                        if kinds.get(used) == "peer"
                        else "is listed after it"
                        if used in kinds
                        else "is not a run of this bench"
                    )
                    problems.append(
                        f"{run.label}: uses.{key}: '{used}' {where}; name an llmkit run listed before "
                        f"{run.label} (runs are made in the order listed)"
                    )
        for name in names:
            for expert in (False, True):
                if sum(peer.expert == expert for peer in self.speed_peers_of(name)) > 1:
                    which = "expert peer runs" if expert else "peer runs without expert: true"
                    problems.append(
                        f"{name}: more than one of its {which} without overrides; keep one (peers "
                        "with overrides are a sweep)"
                    )
        if problems:
            raise ValueError("\n".join(problems))  # one problem a line: each is listed on its own
        return self

    def peers_of(self, name: str) -> list[PeerRun]:
        return [run for run in self.runs if isinstance(run, PeerRun) and run.like == name]

    def speed_peers_of(self, name: str) -> list[PeerRun]:
        """The peers given exactly the run's settings (no overrides): its speed's references."""
        return [run for run in self.peers_of(name) if not run.overrides]

    def speed_reference(self, name: str) -> str | None:
        """The run `name`'s speed is compared with: expect.speed_reference, else its expert peer,
        else its plain peer (None: none)."""
        chosen = self.run(name).expect.speed_reference
        if chosen is not None:
            return chosen
        peers = sorted(self.speed_peers_of(name), key=lambda peer: not peer.expert)
        return peers[0].label if peers else None

    def run(self, name: str) -> BenchRun:
        return next(run for run in self.runs if run.label == name)


def _not_an_llmkit_run(name: str, kinds: dict[str, str]) -> str:
    derived = {"peer": "a peer run", "untuned": "an untuned run"}
    if kinds.get(name) in derived:
        return f"is {derived[kinds[name]]}; name the llmkit run it mirrors"
    llmkit_runs = [run for run, kind in kinds.items() if kind == "llmkit"]
    return f"is not a run of this bench (llmkit runs: {', '.join(llmkit_runs)})"
