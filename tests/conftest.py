"""Shared fixtures: tiny random BERT and GPT-2 checkpoints with real tokenizers, small labelled CSV
files, recipe and CLI helpers, and a guard that fails any attempt to reach the network.

Everything is built locally in temporary directories and loaded through the paths users take
(`model.checkpoint: <dir>`, `llmkit finetune RECIPE ...`), so the suite runs offline.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    DataFiles,
    MatrixRuns,
    invoke,
    save_tiny_bert,
    save_tiny_gpt2,
    sentiment_sentence,
    write_csv,
    write_recipe,
)

# The hub libraries read these when first imported, so they are set before any test imports them.
_HF_HOME = Path(tempfile.mkdtemp(prefix="llmkit-tests-hf-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_HOME=str(_HF_HOME),
    HF_DATASETS_CACHE=str(_HF_HOME / "datasets"),
    LLMKIT_CACHE=str(_HF_HOME / "llmkit"),
    TOKENIZERS_PARALLELISM="false",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    markexpr = config.getoption("-m") or ""
    run_slow = config.getoption("--run-slow") or ("slow" in markexpr and "not slow" not in markexpr)
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow or -m slow"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="gpu: needs CUDA"))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HF_HOME, ignore_errors=True)


class NetworkBlocked(OSError):
    """A test tried to reach the network."""


@pytest.fixture(scope="session", autouse=True)
def no_network() -> Iterator[None]:
    """Every connection attempt except to local Unix sockets fails, so every test also shows that
    llmkit works offline."""
    original_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family == getattr(socket, "AF_UNIX", None):
            return original_connect(self, address)
        raise NetworkBlocked(f"test tried to connect to {address!r}")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        raise NetworkBlocked(f"test tried to connect to {address!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect)
        patch.setattr(socket, "create_connection", create_connection)
        yield


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    # The models are tiny, so a second thread buys nothing; on a 2-core machine shared with other
    # work, oversubscribed threads make every step many times slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints written with save_pretrained: {'bert': dir, 'gpt2': dir}."""
    root = tmp_path_factory.mktemp("checkpoints")
    built = {"bert": root / "tiny-bert", "gpt2": root / "tiny-gpt2"}
    save_tiny_bert(built["bert"])
    save_tiny_gpt2(built["gpt2"])
    return built


@pytest.fixture(scope="session")
def bert_checkpoint(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["bert"]


@pytest.fixture(scope="session")
def gpt2_checkpoint(checkpoints: dict[str, Path]) -> Path:
    return checkpoints["gpt2"]


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    """Binary sentiment with labels 0/1 alternating: 200 train, 41 validation (an odd count, so
    batches do not divide it), 30 test rows."""
    root = tmp_path_factory.mktemp("sentiment")
    paths = {}
    for split, rows, seed in (("train", 200, 1), ("validation", 41, 2), ("test", 30, 3)):
        rng = random.Random(seed)
        data = [[sentiment_sentence(rng, i % 2), i % 2] for i in range(rows)]
        paths[split] = write_csv(root / f"{split}.csv", ["text", "label"], data)
    return DataFiles(paths["train"], paths["validation"], paths["test"])


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    """Sentence pairs: a premise of fillers, and a hypothesis whose cue word sets the label."""
    root = tmp_path_factory.mktemp("pairs")
    paths = {}
    for split, rows, seed in (("train", 60, 4), ("validation", 21, 5)):
        rng = random.Random(seed)
        data = [[sentiment_sentence(rng, None), sentiment_sentence(rng, i % 2), i % 2] for i in range(rows)]
        paths[split] = write_csv(root / f"{split}.csv", ["premise", "hypothesis", "label"], data)
    return DataFiles(paths["train"], paths["validation"], None, text_columns=("premise", "hypothesis"))


@pytest.fixture(scope="session")
def three_label_data(tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    """Three labels written as words (negative / neutral / positive), in other column names."""
    root = tmp_path_factory.mktemp("three-labels")
    names = {0: "negative", 1: "positive", None: "neutral"}
    paths = {}
    for split, rows, seed in (("train", 60, 6), ("validation", 15, 7)):
        rng = random.Random(seed)
        cues = [(0, 1, None)[i % 3] for i in range(rows)]
        data = [[sentiment_sentence(rng, cue), names[cue]] for cue in cues]
        paths[split] = write_csv(root / f"{split}.csv", ["review", "sentiment"], data)
    return DataFiles(
        paths["train"], paths["validation"], None, text_columns=("review",), label_column="sentiment"
    )


@pytest.fixture
def make_recipe(tmp_path: Path) -> Callable[..., Path]:
    """`make_recipe(checkpoint, data, method='full', train={...}, name='recipe.yaml', **sections)`
    writes a recipe into the test's tmp_path and returns its path."""

    def make(*args: Any, name: str = "recipe.yaml", **kwargs: Any) -> Path:
        return write_recipe(tmp_path / name, *args, **kwargs)

    return make


@pytest.fixture(scope="session")
def cli() -> Callable[..., Any]:
    """`cli('finetune', recipe, 'k=v', '--output-dir', d)` -> the CliRunner result."""
    return invoke


@pytest.fixture(scope="session")
def matrix_runs(
    tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path], sentiment_data: DataFiles
) -> MatrixRuns:
    return MatrixRuns(tmp_path_factory.mktemp("matrix"), checkpoints, sentiment_data)
