"""Valid values of dataclass fields, declared next to each field and checked in one place.

A field says what it accepts where it is defined::

    lr: float = spec(1e-3, gt=0, le=10)              # a finite number in (0, 10]
    amp: str = spec("off", choices=("off", "bf16", "fp16"))
    modalities: list[str] = spec(factory=lambda: ["audio", "video"], choices=MODALITIES)  # each item
    run_name: str | None = spec(None, name=True)     # a plain name (below): it becomes a folder name

:func:`check_value` converts a YAML / CLI value to the annotated type and applies the field's rule;
:func:`check_dataclass` applies every rule of an instance (and of its nested sections). Numbers are
always finite; an ``int``/``float`` field without bounds is a schema bug that ``unbounded_fields``
reports (the tests assert there is none).

Names: a value that becomes part of a file or folder name (a run, a cache, a sweep) is declared with
``name=True`` and must be a *plain name* (:func:`is_plain_name`): ASCII letters, digits, ``-``, ``_`` and ``.``,
not starting with a dot (so never ``.`` or ``..``), not empty, at most :data:`NAME_MAX` characters. Such a
value has no path separator, so joined to a folder it stays inside that folder, whatever wrote it (a flag,
``--set``, a recipe, a saved config). ``or_path=".h5"`` also accepts the path of a file with that suffix
(a cache given by its path). No torch, numpy or other heavy import here: a bad option
is rejected before the CLI loads any of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any

from mmvid.errors import MmvidError

NAME_MAX = 128  # leaves room, within a file system's 255 bytes, for what mmvid appends (.shard-i-of-n.h5.partial)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
NAME_RULE = f"a plain name (letters, digits, '-', '_' and '.'; not starting with '.'; at most {NAME_MAX} characters; no path)"


def is_plain_name(value: Any) -> bool:
    """A name that, joined to a folder, names an entry of that folder and nothing else: no separator
    (``/``, ``\\``), not ``.`` or ``..`` (no leading dot at all: no hidden files), not empty."""
    return isinstance(value, str) and len(value) <= NAME_MAX and _NAME.fullmatch(value) is not None


@dataclass(frozen=True)
class Rule:
    """Bounds (ge/gt/le/lt) for numbers, or the allowed ``choices`` (of each item for lists)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    bools: bool = False  # a number field that also reads true / false as 1 / 0 (it was a switch before)
    name: bool = False  # a string that becomes a file or folder name: a plain name (is_plain_name)
    or_path: str | None = None  # with ``name``: a path ending in this suffix is accepted too (".h5")
    # A list of free strings whose items a module of their own checks when it uses them (plug-in files or
    # modules: mmvid.plugins): what each item is, in words; each must be a non-empty line.
    items: str | None = None

    def describe(self, tp: Any) -> str:
        """E.g. 'an integer in [1, 100000]', 'a finite number in (0, 10]', 'one of: off, bf16'."""
        base, optional = _base_type(tp)
        if not self.name and not self.items and self.choices is None and all(b is None for b in (self.ge, self.gt, self.le, self.lt)):
            return _what(tp)  # no rule beyond the type (a plug-in's mapping or switch)
        if self.items:
            what = f"a list of {self.items}"
        elif self.name:
            what = NAME_RULE + (f", or the path of a {self.or_path} file" if self.or_path else "")
        elif self.choices is not None:
            what = f"one of: {', '.join(map(str, self.choices))}"
            if typing.get_origin(base) is list:
                what = f"a non-empty list without repeats of: {', '.join(map(str, self.choices))}"
        else:
            lo = "(-inf" if self.ge is None and self.gt is None else (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}")
            hi = "inf)" if self.le is None and self.lt is None else (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})")
            what = f"{'an integer' if base is int else 'a finite number'} in {lo}, {hi}"
            if self.bools:
                what += " (true = 1, false = 0)"
        if any(typing.get_origin(a) is dict for a in typing.get_args(tp)):
            what += ", or a mapping modality -> such a value"
        return what + (" or none" if optional else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return True  # None passed the type check: the field is Optional
        if self.items:
            return isinstance(value, list) and all(isinstance(v, str) and v.strip() and "\n" not in v and "\0" not in v
                                                   for v in value)
        if self.name:
            return is_plain_name(value) or bool(self.or_path and isinstance(value, str)
                                                and value.endswith(self.or_path) and len(value) > len(self.or_path))
        bounded = any(b is not None for b in (self.ge, self.gt, self.le, self.lt))
        if isinstance(value, dict) and bounded:  # a number per modality (``float | dict[str, float]``): each one's rule
            return all(isinstance(v, (int, float)) and not isinstance(v, bool) and self.ok(v) for v in value.values())
        if self.choices is not None:
            items = value if isinstance(value, list) else [value]
            return bool(items) and len(set(items)) == len(items) and all(v in self.choices for v in items)
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def spec(default: Any = MISSING, *, factory: Any = MISSING, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, choices: tuple[Any, ...] | None = None,
         bools: bool = False, name: bool = False, or_path: str | None = None, items: str | None = None,
         help: str = "", ref: str = "") -> Any:
    """A dataclass ``field`` carrying its :class:`Rule` in ``metadata["rule"]``; a plug-in's setting also
    carries one line of meaning (``help``) and where its reference code sets it (``ref``), which
    ``mmvid train --list NAME`` and the settings tables of docs/methods.md show."""
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices) if choices is not None else None, bools=bools,
                name=name, or_path=or_path, items=items)
    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": rule, "help": help, "ref": ref})


def rule_of(f: dataclasses.Field) -> Rule | None:
    return f.metadata.get("rule")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def field_types(cls_or_obj: Any) -> dict[str, Any]:
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _what(tp: Any) -> str:
    base, optional = _base_type(tp)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    what = names.get(base) or {list: "a list", dict: "a mapping"}.get(typing.get_origin(base), str(base))
    return what + (" or none" if optional else "")


class _Invalid(Exception):
    """The value cannot be converted; check_value turns it into the one-line error."""


def coerce(value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the annotated type; raises _Invalid (with an optional detail)."""
    base, optional = _base_type(tp)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", ""))):
        return None
    if value is None:
        raise _Invalid()
    others = [a for a in typing.get_args(tp) if a is not type(None) and a is not base] \
        if typing.get_origin(tp) in (typing.Union, types.UnionType) else []
    if others:  # ``float | dict[str, float]``: the first type that takes the value
        for alt in (base, *others):
            try:
                return coerce(value, alt)
            except _Invalid:
                pass
        raise _Invalid()
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise _Invalid()
    if base in (int, float):
        if isinstance(value, (bool, dict, list)):
            raise _Invalid()
        try:
            out = base(value)
        except (TypeError, ValueError, OverflowError):  # "ten", int("nan"), int(inf)
            raise _Invalid() from None
        if base is int and isinstance(value, float) and value != out:
            raise _Invalid()
        return out
    if base is str:
        if isinstance(value, (dict, list)):
            raise _Invalid()
        return str(value)
    origin = typing.get_origin(base)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise _Invalid()
        (inner,) = typing.get_args(base)
        return [coerce(v, inner) for v in value]
    if origin is dict:
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value) or {}
            except yaml.YAMLError as e:
                raise _Invalid(f"not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(value, dict):
            raise _Invalid()
        return dict(value)
    return value


def check_value(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Any:
    """``value`` converted to the field's type, or a one-line error naming ``key`` and what it accepts."""
    rule = rule_of(f)
    want = rule.describe(tp) if rule is not None else _what(tp)
    if typing.get_origin(_base_type(tp)[0]) is dict:
        want += f", e.g. {key.split()[-1]}='{{k: 1}}'"
    if rule is not None and rule.bools:
        value = _bool_as_number(value)
    if rule is not None and rule.name and isinstance(value, str) and not value.strip():
        # An empty name is a mistake (a name left out of `--run-name ""` or `run_name: ''`), not "no name".
        raise MmvidError(f"{key}={value!r} is not valid (empty); it must be {want}")
    try:
        out = coerce(value, tp)
    except _Invalid as e:
        detail = f" ({e})" if str(e) else ""
        raise MmvidError(f"{key}={value!r} is not valid{detail}; it must be {want}") from None
    if rule is not None and not rule.ok(out):
        raise MmvidError(f"{key}={value!r} is not valid; it must be {want}")
    return out


BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _bool_as_number(value: Any) -> Any:
    """true / false (YAML or CLI spelling) as 1 / 0, for a number field that replaced a switch."""
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        value = BOOL_WORDS[value.strip().lower()]
    return int(value) if isinstance(value, bool) else value


def check_option(label: str, value: Any, tp: Any = int, **rule: Any) -> Any:
    """A value that is not a dataclass field (a command's own option): same conversion, rule and message."""
    return check_value(dataclasses.field(metadata={"rule": Rule(**rule)}), tp, value, label)


def check_name(label: str, value: Any, or_path: str | None = None) -> str:
    """A command's option that becomes a file or folder name (``--name``): a plain name, else the one line."""
    return check_option(label, value, str, name=True, or_path=or_path)


def check_dataclass(obj: Any, prefix: str = "") -> None:
    """Apply every field's rule of ``obj`` and of its nested dataclass sections."""
    types_ = field_types(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_dataclass(value, f"{prefix}{f.name}.")
        else:
            check_value(f, types_[f.name], value, f"{prefix}{f.name}")


def walk_fields(cls: Any, prefix: str = ""):
    """(dotted key, Field, annotated type) of every value field, nested sections expanded."""
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            yield from walk_fields(types_[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, types_[f.name]


def unbounded_fields(cls: Any) -> list[str]:
    """Schema gaps: numbers without a lower and an upper bound, lists without choices (or ``items`` words)."""
    out = []
    for key, f, tp in walk_fields(cls):
        base, rule = _base_type(tp)[0], rule_of(f)
        if base in (int, float) and (rule is None or (rule.ge is None and rule.gt is None)
                                     or (rule.le is None and rule.lt is None)):
            out.append(key)
        if typing.get_origin(base) is list and (rule is None or (rule.choices is None and not rule.items)):
            out.append(key)
    return out


def field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field (its factory called), or MISSING."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


class SettingValueError(ValueError):
    """Raised by a Settings dataclass's ``__post_init__`` for a value its field's rule cannot express
    (``int | 'auto'``); :func:`check_settings` turns it into the one line naming the plug-in."""

    def __init__(self, key: str, value: Any, want: str) -> None:
        super().__init__(f"{key}={value!r}: it must be {want}")
        self.key, self.value, self.want = key, value, want


def check_settings(cls: Any, args: Any, owner: str, prefix: str, where: Any = "") -> Any:
    """A plug-in's settings (the dataclass ``cls``) from a mapping of its args, every value converted and
    checked like a core config value. ``owner`` names the plug-in (``balancer 'ogm-ge'``), ``prefix`` the
    mapping's config key (``balance.args``). An unknown key is one line naming the plug-in, the key, the
    closest valid key and every valid one; a bad value is :func:`check_value`'s line, naming the plug-in.
    ``where`` ends the line: a string, or a function of the key (where each key's value came from)."""
    at = where if callable(where) else (lambda key: where)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MmvidError(f"config {prefix}={args!r} is not valid for {owner}; it must be a mapping of its settings, "
                         f"e.g. {prefix}.KEY=VALUE{at('')}")
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    types_ = field_types(cls)
    values = {}
    for key, value in args.items():
        if key not in fields_:
            close = difflib.get_close_matches(str(key), list(fields_), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}.{close[0]}?" if close else ""
            valid = f"its settings: {', '.join(fields_)}" if fields_ else "it has no settings"
            raise MmvidError(f"config {prefix}.{key}: {owner} has no setting {str(key)!r}{hint} ({valid}){at(key)}")
        try:
            values[key] = check_value(fields_[key], types_[key], value, f"config {prefix}.{key}")
        except MmvidError as e:
            raise MmvidError(str(e).replace(" is not valid", f" is not valid for {owner}", 1) + at(key)) from None
    try:
        return cls(**values)
    except SettingValueError as e:
        raise MmvidError(f"config {prefix}.{e.key}={e.value!r} is not valid for {owner}; it must be {e.want}{at(e.key)}") from None
