"""Reading recipe values the way editors do, and checking their types the way JSON Schema does,
so that `llmkit recipes validate` and the recipe JSON schema give the same verdict.

PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` is read as the string '1e-3'. Editors
(the YAML language server) follow YAML 1.2, where it is a number. `YamlLoader` reads it as a
number too. The schema classes are strict (a quoted '1e-3' or 'yes' is not a number or boolean,
as in JSON Schema), except that a whole float counts as an integer, as JSON Schema counts it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml

# YAML 1.2's float forms that YAML 1.1 lacks: an exponent without a dot (1e-3, 5E+2, .5e3).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


_BOOL = "tag:yaml.org,2002:bool"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's exponent floats and booleans (true/false only: `yes`,
    `no`, `on` and `off` are strings, as editors read them)."""

    yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML reads this class attribute)
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
YamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass: safe


def _base_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits: Annotated and unions unwrapped."""
    args = get_args(annotation)
    if not args or get_origin(annotation) in (list, dict, Literal):
        return {get_origin(annotation) or annotation}
    if get_origin(annotation) is Annotated:
        return _base_types(args[0])
    return set().union(*(_base_types(arg) for arg in args))


def _takes_int_not_float(annotation: Any) -> bool:
    types = _base_types(annotation)
    return int in types and float not in types


def whole_floats_as_ints(model: Any, data: Any) -> Any:
    """A before-validator body: `16.0` given for an integer field becomes 16."""
    if not isinstance(data, dict):
        return data
    converted = dict(data)
    for name, field in model.model_fields.items():
        value = converted.get(name)
        if isinstance(value, float) and value.is_integer() and _takes_int_not_float(field.annotation):
            converted[name] = int(value)
    return converted
