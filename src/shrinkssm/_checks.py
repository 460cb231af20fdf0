"""The checks of a named argument that every layer of the package shares (``lti``, ``data``,
``nn``, ``compress``): one of its allowed values, a positive integer. Imports nothing from the
package."""

from __future__ import annotations

import operator
from collections.abc import Sequence

__all__ = ["check_choice", "check_positive_int"]


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise ``ValueError("<name> must be one of a, b; got 'x'")`` unless ``value`` is one of
    ``choices``. The message names the option as the caller knows it; callers that speak to the
    command line translate the name (``data.wording``, the config schema)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is an integer >= 1 (any ``__index__`` type, not bool), else
    ``ValueError("<name> must be a positive integer, got ...")``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n
