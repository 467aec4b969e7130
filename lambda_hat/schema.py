"""Typed config schemas on pydantic v2, with error messages a user can act on, and the one
reader of every config file (:func:`read_yaml`).

A schema class is a frozen pydantic dataclass (:func:`config_dataclass`) whose fields are made
with :func:`field` (default, help text, ``ge``/``gt``/``le``/``lt`` bounds); pydantic checks
types, ``Literal`` choices, bounds and unknown keys. :func:`validate` turns the first of
pydantic's errors into a :class:`ConfigError` that names the YAML path
(``problems[0].overrides.model.depht``), the value, what is allowed (the valid keys with a
"did you mean", the choices, the bound and the field's help) and the fix.

Pydantic dataclasses, not ``BaseModel``: the validated objects stay ordinary frozen
dataclasses, so ``dataclasses.asdict``/``replace``/``fields`` keep working for every caller.

On top of pydantic's lax mode two YAML 1.1 rules hold: a number written as a string is a number
(PyYAML reads ``1e-4`` and ``1e3`` as strings; an integer field takes ``"1e3"``), and a bool is
never a number nor a number a bool (``depth: true`` and ``bias: 1`` are errors).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import ConfigDict, ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# A field with an alias (``class`` for ``class_``) takes either name: the YAML writes the
# alias, Python code the field's name.
_STRICT_KEYS = ConfigDict(
    extra="forbid", validate_default=True, validate_by_name=True, validate_by_alias=True
)

# pydantic error type -> (FieldInfo metadata attribute, the word in the message)
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}
_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")


class ConfigError(ValueError):
    """A config value is wrong. The message names the field, the value, and the fix."""

    def __init__(self, where: str, problem: str, fix: str = "", source: str | None = None):
        self.where, self.problem, self.fix, self.source = where, problem, fix, source
        head = f"{source}: " if source else ""
        super().__init__(f"{head}{where}: {problem}" + (f" Fix: {fix}" if fix else ""))


def field(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A schema field: its default (none: required), its help text and bounds (ge, gt, le, lt).

    The help text is pydantic's ``description``; list and dict defaults are copied per instance.
    """
    if default is dataclasses.MISSING:
        info = pydantic.Field(description=help, **checks)
    elif isinstance(default, list | dict):
        info = pydantic.Field(
            default_factory=lambda d=default: type(d)(d), description=help, **checks
        )
    else:
        info = pydantic.Field(default, description=help, **checks)
    info.metadata.append(pydantic.WrapValidator(_yaml_scalars))
    return info


def config_dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a schema: a frozen pydantic dataclass that rejects unknown keys and reads
    a null section (``reference:`` with nothing under it) as all defaults."""
    cls._null_is_defaults = pydantic.model_validator(mode="before")(_null_is_defaults)
    return pydantic.dataclasses.dataclass(cls, frozen=True, config=_STRICT_KEYS)


def validate(value: Any, cls: type[T], where: str) -> T:
    """``value`` (a mapping, or an instance) checked against the schema ``cls`` and built.

    Raises :class:`ConfigError` for the first problem, in the order a reader meets them: at
    each level unknown keys first, then the fields in declaration order, depth first.
    """
    try:
        return cls.__pydantic_validator__.validate_python(value)
    except ValidationError as exc:
        first = min(exc.errors(), key=lambda e: _walk(cls, e["loc"])[0])
        raise _config_error(first, cls, where) from None


def field_type(cls: type, name: str) -> Any:
    """The type of field ``name`` of the schema ``cls`` (``X | None`` read as ``X``); None when
    ``cls`` has no such field."""
    info = cls.__pydantic_fields__.get(name)
    return None if info is None else _unwrap(info.annotation)


def allowed(cls: type, name: str) -> str:
    """What field ``name`` of ``cls`` accepts, in words: ``an integer >= 2``, ``a number > 0
    and < 1``, ``one of 'none', 'adam'`` (for messages about values checked elsewhere)."""
    info = cls.__pydantic_fields__[name]
    tp = _unwrap(info.annotation)
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    bounds = [
        f"{word} {getattr(m, attr)}"
        for attr, word in _BOUNDS.values()
        for m in info.metadata
        if hasattr(m, attr)
    ]
    return " and ".join([f"{_expected(tp)} {bounds[0]}" if bounds else _expected(tp), *bounds[1:]])


def as_dict(obj: Any) -> dict:
    """A validated schema object as plain nested dicts (what gets hashed and stored)."""
    return dataclasses.asdict(obj)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents; a :class:`ConfigError` naming the file when it cannot be read
    or parsed (the one reader of every config file: both YAML kinds and the presets)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            str(path), f"cannot read the file ({exc.strerror}).", "check the path."
        ) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """``text`` read as plain YAML data (``yaml.safe_load``); a :class:`ConfigError` at
    ``where`` for a syntax error, or for a tag that asks for a Python object (which would run
    code: never honoured) or any other non-data tag."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = getattr(exc, "problem", None) or str(exc)
        tag = (
            _UNKNOWN_TAG.search(what)
            if isinstance(exc, yaml.constructor.ConstructorError)
            else None
        )
        if tag is None:
            raise ConfigError(
                where, f"YAML syntax error at {loc}: {what}.", "fix the indentation/quoting there."
            ) from None
        raise _tag_error(tag.group(1), loc, where) from None


_UNKNOWN_TAG = re.compile(r"constructor for the tag '([^']+)'")


def _tag_error(tag: str, loc: str, where: str) -> ConfigError:
    """The error for a YAML tag that plain data does not have (``!!python/...``, ``!foo``)."""
    shown = "!!" + tag.removeprefix(_YAML_TAG_PREFIX) if tag.startswith(_YAML_TAG_PREFIX) else tag
    if "python/" in tag:
        problem = (
            f"the tag {shown} at {loc} asks for a Python object, which would run code as the "
            "YAML is read; lambda_hat reads configs as plain data and never honours such tags "
            "(nothing was run)."
        )
    else:
        problem = f"the tag {shown} at {loc} is not plain YAML data; configs take none."
    return ConfigError(
        where, problem, "write a plain value there (number, string, list or mapping), no tag."
    )


_YAML_TAG_PREFIX = "tag:yaml.org,2002:"


# ----------------------------------------------------------------------- the YAML 1.1 rules


def _null_is_defaults(cls: type, value: Any) -> Any:
    return {} if value is None else value


def _yaml_scalars(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        out = handler(value)
    except ValidationError:
        number = _as_numbers(value)
        if number is value:
            raise
        out = handler(number)
    if isinstance(value, list) and isinstance(out, list):
        for i, (given, got) in enumerate(zip(value, out, strict=False)):
            if isinstance(given, bool) != isinstance(got, bool):
                raise PydanticCustomError("yaml_bool", "bool and number mixed", {"index": i})
    elif isinstance(value, bool) != isinstance(out, bool):
        raise PydanticCustomError("yaml_bool", "bool and number mixed", {"index": None})
    return out


def _as_numbers(value: Any) -> Any:
    """Strings that read as numbers, as floats (``value`` itself when there are none)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        items = [_as_numbers(v) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


# -------------------------------------------------------------------- errors -> ConfigError


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(tp) and len(args) == 1 else tp


def _walk(cls: type, loc: tuple) -> tuple[tuple, Any, Any, type]:
    """Follow an error location through the schema.

    Returns a sort key (an unknown key ranks before every field of its class, fields rank in
    declaration order, list items by index), the type at ``loc``, the field holding it and
    the schema class the last key belongs to.
    """
    rank: list[int] = []
    tp, info, owner = cls, None, cls
    for part in loc:
        tp = _unwrap(tp)
        fields = getattr(tp, "__pydantic_fields__", None)
        if fields is not None and isinstance(part, str):
            owner, fields = tp, keys_of(tp)
            if part not in fields:
                return (*rank, -1), None, None, owner
            rank.append(list(fields).index(part))
            info = fields[part]
            tp = info.annotation
        elif isinstance(part, int) and typing.get_origin(tp) is list:
            rank.append(part)
            tp = typing.get_args(tp)[0]
        else:
            break
    return tuple(rank), _unwrap(tp), info, owner


def keys_of(cls: type) -> dict[str, Any]:
    """The YAML keys of schema ``cls`` -> their fields: a field's alias where it has one
    (``class`` for the field ``class_``, a Python keyword), else its name."""
    return {info.alias or name: info for name, info in cls.__pydantic_fields__.items()}


def _path(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _expected(tp: Any) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in words:
        return words[tp]
    if typing.get_origin(tp) is list:
        return "a list"
    if tp is dict or typing.get_origin(tp) is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return str(tp)


def _config_error(err: dict, cls: type, where: str) -> ConfigError:
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    if kind == "yaml_bool" and err["ctx"]["index"] is not None:
        loc, value = (*loc, err["ctx"]["index"]), value[err["ctx"]["index"]]
    _, tp, info, owner = _walk(cls, loc)
    path = _path(where, loc)
    if kind in _UNKNOWN_KEY:
        names = list(keys_of(owner))
        return ConfigError(
            path,
            f"unknown key.{_did_you_mean(str(loc[-1]), names)} Valid keys here: "
            f"{', '.join(names)}.",
            "correct the spelling or remove the key.",
        )
    if kind == "missing":
        return ConfigError(path, "is required.", f"add '{loc[-1]}: ...' ({info.description}).")
    if kind in _BOUNDS:
        attr, word = _BOUNDS[kind]
        bound = next(getattr(m, attr) for m in info.metadata if hasattr(m, attr))
        shown = float(value) if tp is float and isinstance(value, int) else value
        return ConfigError(
            path,
            f"got {shown!r}, must be {word} {bound}.",
            f"set a value {word} {bound} ({info.description}).",
        )
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        return ConfigError(
            path,
            f"got {value!r}; allowed: {', '.join(map(repr, choices))}.{hint}",
            "use one of the allowed values.",
        )
    if value is None:
        return ConfigError(path, f"is null, expected {_expected(tp)}.")
    fix = "write a number." if isinstance(value, str) and tp in (int, float) else ""
    return ConfigError(path, f"got {value!r}, expected {_expected(tp)}.", fix)
