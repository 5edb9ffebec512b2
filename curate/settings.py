"""Reading a settings file (a job, a training config, an ablation job) into a pydantic model,
with one error format for all of them: the file, then every problem with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class SettingsError(ValueError):
    """An invalid settings file; the message lists every problem with its key path."""


def load_settings(
    path: str | Path | None,
    model: type[Model],
    what: str,
    overrides: dict[str, Any] | None = None,
    error: type[ValueError] = SettingsError,
) -> Model:
    """Validate the YAML (or JSON) mapping in `path` (none: an empty one), with `overrides` on top.

    `what` names the kind of file in messages ("job", "training config"); `error` is the
    exception the caller's users already catch.
    """
    data: dict[str, Any] = {}
    name = str(path) if path else "command line"
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise error(f"{what} file {path} not found") from None
        except yaml.YAMLError as e:
            raise error(f"{path}: not valid YAML: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            article = "an" if what[:1] in "aeiou" else "a"
            raise error(f"{path}: {article} {what} is a YAML mapping, got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{name}: invalid {what}"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise error("\n".join(lines)) from None
