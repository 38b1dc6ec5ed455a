"""ImageNet-1k class names, offline (timm ships them), and lookup by index or name."""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import UnknownClass


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k descriptions in index order, e.g. 285 -> 'Egyptian cat'."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def short_name(description: str) -> str:
    """'tabby, tabby cat' -> 'tabby': the first synonym, for compact labels."""
    return description.split(",")[0].strip()


def find_classes(query: str, names: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of classes whose description contains ``query`` (case-insensitive).

    Exact matches of a synonym come first so that 'cat' does not drown in
    'tabby cat', 'tiger cat', ...
    """
    q = query.strip().lower()
    if not q:
        return []
    exact = [i for i, n in enumerate(names) if q in (s.strip().lower() for s in n.split(","))]
    partial = [i for i, n in enumerate(names) if q in n.lower() and i not in exact]
    return exact + partial


def resolve_target(target: int | str | None, names: tuple[str, ...] | list[str]) -> int | None:
    """Turn a user's target (index, numeric string or class name) into an index.

    ``None`` stays ``None`` (meaning: the predicted class).  Raises
    :class:`UnknownClass` for an index out of range or a name that matches nothing.
    """
    if target is None:
        return None
    import math
    import numbers

    from .errors import shown

    if isinstance(target, bool) or not isinstance(target, str | numbers.Real):
        raise UnknownClass(f"Target {shown(target)} is not a class index or name.")
    if isinstance(target, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,18}\s*", target):
        target = int(target)
    if isinstance(target, numbers.Real) and not isinstance(target, numbers.Integral):
        if not (math.isfinite(target) and float(target).is_integer()):
            raise UnknownClass(f"Target {shown(target)} is not a class index (a whole number) or a name.")
        target = int(target)
    if isinstance(target, numbers.Integral):
        target = int(target)
        if not 0 <= target < len(names):
            raise UnknownClass(
                f"Class index {shown(target, 30)} is out of range: this model has classes 0 to {len(names) - 1}."
            )
        return target
    hits = find_classes(target, names)
    if not hits:
        raise UnknownClass(f"No class matches {shown(target)}. Try a shorter part of the name, e.g. 'cat'.")
    return hits[0]
