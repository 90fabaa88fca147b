"""What a saved model says about its base checkpoint, in a form that holds on another machine.

`model.checkpoint` may be a hub id, a directory, a .gguf file or `package:MODULE/path`. The files
meant to be shared (adapter_config.json, config.json, the model card) name it without this
machine's paths: the hub id as is; a package reference as written, with the plain-Python
expression that finds it wherever the package is installed; a local directory or file by its name
only, since no other machine has it at that path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.models.checkpoint import PACKAGE_PREFIX, locate_checkpoint

ADAPTER_CONFIG_FILE = "adapter_config.json"
# Keys transformers and PEFT write with the path a model was loaded from.
PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path", "tokenizer_name_or_path")


@dataclass(frozen=True)
class BaseReference:
    reference: str  # what the shared files record
    hub_id: str | None  # set when the base is a hub model
    # A Python expression giving a path or hub id that `from_pretrained` loads, or None when the
    # base is a local copy only its owner has.
    loader_expression: str | None
    gguf_file: str | None = None  # the file inside that directory, for a GGUF base

    @property
    def module(self) -> str | None:
        """The package whose files hold the base, when there is one."""
        if not self.reference.startswith(PACKAGE_PREFIX):
            return None
        return self.reference.removeprefix(PACKAGE_PREFIX).partition("/")[0]


def base_reference(checkpoint: str) -> BaseReference:
    location = locate_checkpoint(checkpoint)
    gguf = location.gguf_file.name if location.gguf_file else None
    if checkpoint.startswith(PACKAGE_PREFIX):
        module, _, relative = checkpoint.removeprefix(PACKAGE_PREFIX).partition("/")
        directory = str(Path(relative).parent) if gguf else relative
        parts = "".join(f" / {part!r}" for part in Path(directory).parts if part not in ("", "."))
        expression = f"str(importlib.resources.files({module!r}){parts})"
        return BaseReference(checkpoint, None, expression, gguf)
    if not location.is_local:
        return BaseReference(checkpoint, checkpoint, repr(checkpoint))
    name = location.gguf_file.name if location.gguf_file else Path(location.path).name
    return BaseReference(name, None, None, gguf)


def record_base(model_dir: Path, base: BaseReference) -> None:
    """Replace this machine's paths in the saved files by the portable base reference."""
    for name in (ADAPTER_CONFIG_FILE, "config.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        settings = json.loads(path.read_text(encoding="utf-8"))
        changed = _portable(settings, base)
        if changed:
            path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _portable(settings: dict[str, Any], base: BaseReference) -> bool:
    changed = False
    for key in PATH_KEYS:
        value = settings.get(key)
        if isinstance(value, str) and value and value != base.reference:
            settings[key] = base.reference
            changed = True
    return changed
