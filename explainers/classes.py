"""ImageNet-1k class names, offline (timm ships them), and lookup by index or name."""

from __future__ import annotations

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
    if isinstance(target, bool):
        raise UnknownClass(f"Target {target!r} is not a class index or name.")
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target.strip())
    if isinstance(target, int):
        if not 0 <= target < len(names):
            raise UnknownClass(
                f"Class index {target} is out of range: this model has classes 0 to {len(names) - 1}."
            )
        return target
    hits = find_classes(str(target), names)
    if not hits:
        raise UnknownClass(f"No class matches {target!r}. Try a shorter part of the name, e.g. 'cat'.")
    return hits[0]
