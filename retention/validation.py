"""pydantic's ValidationError, turned into one readable line naming the key or field.

Shared by the config loader (which also names the file, the policy and the env variable) and
the admin API (which answers 400 naming the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from retention.errors import ConfigError


def first_error(exc: ValidationError) -> ErrorDetails:
    """The error to report. A misspelt key also shows up as a missing one: the misspelling is
    the cause, so unknown keys come first."""
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    return errors[0]


def problem_text(
    error: ErrorDetails,
    *,
    unknown: str = "unknown key",
    missing: str = "required key is missing",
    echo_input: bool = True,
) -> str:
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return unknown
    if error["type"] == "missing":
        return missing
    problem = error["msg"]
    if echo_input and "input" in error and not isinstance(error["input"], dict | list):
        problem += f" (got {error['input']!r})"
    return problem


def readable_error(
    exc: ValidationError,
    raw: dict[str, Any],
    *,
    source: str,
    env: Mapping[str, str],
    env_prefix: str,
    model: type[BaseModel],
) -> ConfigError:
    """One ConfigError naming the file (or env variable), the policy or hold, and the key."""
    error = first_error(exc)
    loc = [str(part) for part in error["loc"]]
    problem = problem_text(error)
    if error["type"] == "extra_forbidden":
        problem += _known_keys(model, error["loc"][:-1])
    key, label = _key_label(loc, raw)
    env_name = env_prefix + "__".join(loc).upper()
    if env_name in env:
        source = f"env {env_name}"
    return ConfigError(problem, source=source, key=f"{label}{key}")


def _known_keys(model: type[BaseModel], parent: tuple[int | str, ...]) -> str:
    for part in parent:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        model = inner
    return " (known keys: " + ", ".join(model.model_fields) + ")"


def _key_label(loc: list[str], raw: dict[str, Any]) -> tuple[str, str]:
    """Turn ('policies', '0', 'max_age') into "max_age" with label "policies[0] 'qa': "."""
    if len(loc) >= 2 and loc[0] in ("policies", "holds") and loc[1].isdigit():
        index = int(loc[1])
        items = raw.get(loc[0], [])
        name = (
            items[index].get("name")
            if index < len(items) and isinstance(items[index], dict)
            else None
        )
        label = f"{loc[0]}[{index}]" + (f" {name!r}" if name else "")
        rest = ".".join(p for p in loc[2:] if not p.isdigit()) or "(entry)"
        return rest, label + ": "
    return ".".join(loc), ""
