"""The one check of a named option against its allowed values, shared by every layer of the
package (``lti``, ``data``, ``nn``, ``compress``). Imports nothing from the package."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_choice"]


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise ``ValueError("<name> must be one of a, b; got 'x'")`` unless ``value`` is one of
    ``choices``. The message names the option as the caller knows it; callers that speak to the
    command line translate the name (``data.wording``, the config schema)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
