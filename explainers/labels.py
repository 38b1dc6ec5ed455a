"""Class names that belong to a model: read from a labels file and checked against its head.

A labels file is one name per line (a trailing newline is fine, a blank line inside is not), a JSON
list of names, or a JSON object mapping class indices ("0".."n-1") to names.  Mistakes are the user's
to fix, so every one is an :class:`InvalidLabels` with one line that names the file and the problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import InvalidLabels

MAX_LABELS = 1_000_000  # a labels file is text; beyond this it is something else
MAX_NAME_CHARS = 1000  # a class name is shown in the app (ImageNet's longest is 121 characters)
MAX_BYTES = 64 << 20  # 1M names of ~60 bytes; a bigger file is not a labels file (and is not read into memory)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # not str.splitlines: \x0b, \x1c, \x85 or U+2028 inside a name do not split it


def read_labels(path: str | Path) -> tuple[str, ...]:
    """The class names in index order."""
    path = Path(path)
    if not path.is_file():
        raise InvalidLabels(f"Labels file {path.name!r} does not exist.")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InvalidLabels(f"Labels file {path.name!r} is {path.stat().st_size / 2**20:.0f} MB; a labels file "
                                f"is at most {MAX_BYTES >> 20} MB of text.")
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise InvalidLabels(f"Labels file {path.name!r} is not UTF-8 text ({type(exc).__name__}).") from exc
    if path.suffix.lower() == ".json":
        return _from_json(text, path.name)
    lines = _LINE_BREAK.split(text)
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise InvalidLabels(f"Labels file {path.name!r} is empty.")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise InvalidLabels(f"Labels file {path.name!r} has a blank line at line {blank[0]}: one name per line.")
    return _checked(names, path.name)


def _from_json(text: str, where: str) -> tuple[str, ...]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidLabels(f"Labels file {where!r} is not valid JSON (line {exc.lineno}).") from exc
    except RecursionError as exc:  # "[[[[...": nested deeper than the parser's stack
        raise InvalidLabels(f"Labels file {where!r}: the JSON is nested too deeply to be a labels file.") from exc
    if isinstance(obj, list):
        if not all(isinstance(n, str) and n.strip() for n in obj):
            raise InvalidLabels(f"Labels file {where!r}: a JSON list must hold non-empty strings only.")
        return _checked([n.strip() for n in obj], where)
    if isinstance(obj, dict):
        if not all(re.fullmatch(r"[0-9]{1,9}", k) for k in obj):  # "0".."n-1"; not " 2", "1_0", "+1" or "٣"
            raise InvalidLabels(f"Labels file {where!r}: JSON object keys must be class indices (0, 1, 2, ...).")
        indexed = {int(k): v for k, v in obj.items()}
        if len(indexed) != len(obj):  # "1" and "01"
            raise InvalidLabels(f"Labels file {where!r}: a class index appears twice (e.g. '1' and '01').")
        if sorted(indexed) != list(range(len(indexed))):
            missing = sorted(set(range(max(indexed, default=-1) + 1)) - set(indexed))[:3]
            raise InvalidLabels(f"Labels file {where!r}: indices must run 0..{len(indexed) - 1} without gaps"
                                + (f" (missing {missing})" if missing else " (negative or duplicate index)") + ".")
        if not all(isinstance(v, str) and v.strip() for v in indexed.values()):
            raise InvalidLabels(f"Labels file {where!r}: every class name must be a non-empty string.")
        return _checked([indexed[i].strip() for i in range(len(indexed))], where)
    raise InvalidLabels(f"Labels file {where!r}: JSON must be a list of names or an object index -> name.")


def _checked(names: list[str], where: str) -> tuple[str, ...]:
    if not names:  # [] or {} in a JSON file
        raise InvalidLabels(f"Labels file {where!r} names no classes.")
    if len(names) > MAX_LABELS:
        raise InvalidLabels(f"Labels file {where!r} has {len(names)} names; the limit is {MAX_LABELS}.")
    long = next((i for i, n in enumerate(names) if len(n) > MAX_NAME_CHARS), None)
    if long is not None:
        raise InvalidLabels(f"Labels file {where!r}: name {long + 1} is {len(names[long])} characters long; "
                            f"a class name is at most {MAX_NAME_CHARS}.")
    return tuple(names)


def check_count(names: tuple[str, ...], num_classes: int, where: str) -> None:
    """The model's head and its labels must agree, or every name would be shifted or missing."""
    if len(names) != num_classes:
        raise InvalidLabels(f"{where}: the labels name {len(names)} classes but the model has {num_classes} outputs.")


def default_names(num_classes: int) -> tuple[str, ...]:
    """Names for a head without a labels file: 'class 0', 'class 1', ..."""
    return tuple(f"class {i}" for i in range(num_classes))
