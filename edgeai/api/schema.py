"""Swagger models built from the report's dataclasses, so the shape is defined once."""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from flask_restx import Namespace, fields


def _unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _field(ns: Namespace, hint: Any, description: str) -> fields.Raw:
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return fields.Nested(model_for(ns, hint), description=description, allow_null=True)
    if origin is list:
        (item,) = typing.get_args(hint)
        return fields.List(_field(ns, item, ""), description=description)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return fields.String(description=description, enum=[m.value for m in hint])
    simple = {str: fields.String, int: fields.Integer, float: fields.Float,
              bool: fields.Boolean}
    return simple.get(hint, fields.Raw)(description=description)


def model_for(ns: Namespace, cls: type) -> Any:
    """The namespace's model for dataclass ``cls`` (made once per name)."""
    name = cls.__name__
    if name in ns.models:
        return ns.models[name]
    hints = typing.get_type_hints(cls)
    return ns.model(name, {item.name: _field(ns, hints[item.name],
                                             item.metadata.get("doc", ""))
                           for item in dataclasses.fields(cls)})
