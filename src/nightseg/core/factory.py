"""``package.module:attribute`` references: custom datasets and models named in a recipe or a checkpoint."""

from __future__ import annotations

import importlib
from typing import Any

from nightseg.core.errors import UserError


def import_factory(name: str, what: str) -> Any:
    """Return the object ``package.module:attribute`` names; a UserError naming `what` if it does not exist."""
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{what} {name!r}: cannot import it ({exc})") from None
