"""YAML file + ``key=value`` overrides -> one validated config, and back to ``config.yaml``.

All validation (unknown key, wrong type, impossible value, missing model path) happens here,
before a stage loads anything, and is reported as one :class:`~rlhfkit.errors.ConfigError` that
names each key and where it came from (the YAML file or the command line)."""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rlhfkit.config.base import MISPLACED_KEY, BaseConfig
from rlhfkit.errors import ConfigError

C = TypeVar("C", bound=BaseConfig)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, TypeError, AttributeError):
            # PyYAML's constructors raise plain ValueError etc. for e.g. '2020-13-45' or
            # '!!int abc'. Leave it a string; the field's type decides whether that is valid.
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: key '{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a ConfigError that names the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    except (ValueError, TypeError, AttributeError) as e:  # PyYAML constructors: '2020-13-45', '!!int abc'
        raise ConfigError(f"{p}: invalid YAML value: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> C:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides (overrides win)."""
    file_values = read_yaml(path) if path is not None else {}
    cli_values = parse_overrides(overrides or [])
    return config_from_dict(cls, file_values, cli_values, source=str(path) if path else None)


def config_from_dict(cls: type[C], file_values: dict[str, Any], cli_values: dict[str, Any] | None = None,
                     *, source: str | None = None) -> C:
    """Validate merged values; errors name each key and whether it came from ``source`` or the CLI."""
    cli_values = cli_values or {}
    merged = _deep_merge(file_values, cli_values)
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        lines = [_error_line(cls, err, cli_values, source) for err in e.errors()]
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid {cls.__name__}{where}:\n" + "\n".join(lines)) from None


def _error_line(cls: type[BaseModel], err: Any, cli_values: dict[str, Any], source: str | None) -> str:
    """One line of a ConfigError: the key (dotted, e.g. `rl.ppo.kl_coef`), its origin and the problem."""
    loc = [str(p) for p in err["loc"]]

    def origin(key: str) -> str:
        return "command line" if _given_on_cli(key, cli_values) else (source or "defaults")

    if err["type"] == MISPLACED_KEY:  # the message names the key(s) and why they are not here
        keys = [".".join([*loc, k]) for k in err["ctx"]["keys"]]
        within = "".join(f"{p}." for p in loc)  # a section's keys: `rl.ppo.top_k: ...`
        return f"  {within}{err['msg']} [{origin(keys[0])}]"
    key = ".".join(loc) or "(config)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        known = ", ".join(sorted(_model_at(cls, loc[:-1]).model_fields))
        msg = f"unknown key (known keys: {known})"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error",):
        msg = f"{msg} (got {err['input']!r})"
    return f"  {key} [{origin(key)}]: {msg}"


def _given_on_cli(key: str, cli_values: dict[str, Any]) -> bool:
    """Whether the command line set ``key``, a value above it, or keys inside it (a mapping)."""
    node: Any = cli_values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return True


def _model_at(cls: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The model class (a pipeline section, say) at ``path`` below ``cls``: through fields, optional
    values and the run names of `dict[str, Section]` fields. ``cls`` when the path leads elsewhere."""
    tp: Any = cls
    for part in path:
        tp = _unwrap_optional(tp)
        if typing.get_origin(tp) is dict:  # `part` is a key of the mapping (a run name)
            tp = typing.get_args(tp)[1]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return cls
    tp = _unwrap_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else cls


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def save_config(cfg: BaseConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``config.yaml`` in the run directory (reloadable as is)."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json")
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def _type_name(annotation: Any) -> str:
    """`str`, `list[str]`, `SFTSection | None` (module paths dropped), `Literal['no', 'fp16']`."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", text)


def describe_fields(cls: type[BaseConfig]) -> str:
    """The ``--help`` text of a stage: every key, its type, default and docstring."""
    lines = []
    for name, field in cls.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):  # a pipeline section: the keys it sets
                value = value.model_dump(exclude_unset=True)
            default = f"default: {value!r}"
        lines.append(f"  {name} ({_type_name(field.annotation)}; {default})")
        if field.description:
            lines.append("      " + " ".join(field.description.split()))
    return "\n".join(lines)
