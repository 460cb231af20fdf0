"""Data-layer messages in the command line's own words.

The loaders and preparers speak Python (``permute must be True or False``, ``pass
missing='mean'``), because they are a Python API. The ``shrinkssm`` command line names the same
things differently: a loader option ``permute`` is the config key ``data.options.permute``, the
loader's ``root`` is ``data.root``, ``val_fraction`` is ``data.val_fraction`` and ``seed`` is
``train.seed``; a preparer option is a ``KEY=VALUE`` argument of ``shrinkssm data prepare NAME``
and its ``dest`` is ``--dest DIR``. :func:`for_train` and :func:`for_prepare` rewrite a message of
the data layer into those names, and Python literals into YAML ones (``True`` -> ``true``,
``None`` -> ``null``), leaving everything else as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["for_train", "for_prepare", "yaml_value"]

_TRAIN_KEYS = {"root": "data.root", "val_fraction": "data.val_fraction", "seed": "train.seed",
               "name": "data.name"}


def yaml_value(value: object) -> str:
    """A default as a user would type it after ``=``: ``true``, ``null``, ``96000``, ``standard``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _literals(text: str) -> str:
    text = re.sub(r"\bTrue or False\b", "true or false", text)
    text = re.sub(r"=True\b", "=true", text)
    text = re.sub(r"=False\b", "=false", text)
    text = re.sub(r"\bor None\b", "or null", text)
    return re.sub(r"=None\b", "=null", text)


def _rewrite(message: str, names: Iterable[str], key: Callable[[str], str], defaults: dict,
             what: Callable[[str], str], verb: str) -> str:
    names = set(names)
    unknown = re.match(r"^unknown option\(s\) \[(.*?)\] for (?:data set|prepare) '([\w-]+)'; "
                       r"valid options: .*$", message, re.S)
    if unknown:
        given = [g.strip(" '\"") for g in unknown.group(1).split(",")]
        valid = ", ".join(f"{key(k)}={v}" for k, v in defaults.items()) or "none"
        return (f"{', '.join(key(g) for g in given)}: unknown option of {what(unknown.group(2))}; "
                f"valid options (with defaults): {valid}")
    message = _literals(message)
    head = re.match(r"^(\w+)(:| must| needs| is| has) (.*)$", message, re.S)
    if head and head.group(1) in names:
        verb = head.group(2).strip(" :")
        message = f"{key(head.group(1))}: {verb + ' ' if verb else ''}{head.group(3)}"
    # "pass missing='mean'", "use split='contiguous'", "lower val_fraction / test_fraction"
    message = re.sub(r"\b(pass|use|set) (\w+)='?([^'\s;,)]*)'?",
                     lambda m: f"{verb} {key(m.group(2))}={m.group(3)}" if m.group(2) in names
                     else m.group(0), message)
    message = re.sub(r"\b(\w+)='([^']*)'",
                     lambda m: f"{key(m.group(1))}={m.group(2)}" if m.group(1) in names
                     else m.group(0), message)
    return re.sub(r"\blower (\w+)((?: / \w+)*)",
                  lambda m: "lower " + " / ".join(key(n) if n in names else n for n in
                                                  [m.group(1)] + m.group(2).split(" / ")[1:]),
                  message)


def for_train(message: str, data_name: str | None = None) -> str:
    """A loader's message as ``shrinkssm train`` names things (``data.options.permute: must be
    true or false, got 3``); ``data_name`` is the ``data.name`` the loader was asked for."""
    from .registry import dataset_options

    try:
        defaults = dataset_options(data_name) if data_name else {}
    except ValueError:                                  # an unknown data set
        defaults = {}
        if message.startswith("unknown data set"):
            return f"data.name: {message}"
    names = set(defaults) | set(_TRAIN_KEYS) | {"test_fraction"}

    def key(name: str) -> str:
        return _TRAIN_KEYS.get(name, f"data.options.{name}")

    shown = {k: yaml_value(v) for k, v in defaults.items()}
    message = _rewrite(message, names, key, shown, lambda n: f"data set {n!r}", "set")
    if re.match(r"^(data|train)\.[\w.]+: ", message) or message.startswith("data set"):
        return message
    return f"data set {data_name!r}: {message}"


def for_prepare(message: str, name: str) -> str:
    """A preparer's message as ``shrinkssm data prepare NAME`` names things (``n_train: must be
    an int >= 1, got 0``, ``--dest DIR``)."""
    from .prepare import PREPARERS, preparer_options

    if name not in PREPARERS:
        return message
    defaults = preparer_options(name)

    def key(option: str) -> str:
        return "--dest" if option in ("dest", "out_dir") else option

    shown = {k: "auto" if v is None and k in ("n_val", "n_test") else yaml_value(v)
             for k, v in defaults.items()}
    return _rewrite(message, set(defaults) | {"dest", "out_dir"}, key, shown,
                    lambda n: f"`shrinkssm data prepare {n}`", "pass")
