"""The project file ``relevance-explorer.toml``: a user's own models and datasets, by name.

Found in the working directory, or wherever ``$RELEVANCE_EXPLORER_CONFIG`` points.  Paths inside it are
relative to the file's own folder.  This file (and the CLI) is the only way a server path reaches the app:
the browser picks registered names, it never types a path.

```toml
[models.birds]
source = "torchvision:resnet50"        # timm:<name> | torchvision:<name> | package.module:function | a zoo name
checkpoint = "checkpoints/birds.pt"    # optional: a state dict for that architecture (its head is resized)
labels = "birds.txt"                   # one name per line, or JSON list / {index: name}
num_classes = 200                      # optional when labels are given
[models.birds.preprocessing]           # optional overrides of the model's own metadata
resize = 256
crop = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
interpolation = "bilinear"

[datasets.birds-val]
path = "data/cub/val"                  # ImageFolder, a .csv/.parquet manifest (path,label) or a plain folder
layout = "auto"                        # auto | imagefolder | manifest | folder
limit = 5000                           # optional: the first N files
sample = 500                           # optional: N files at random (seed)
seed = 0
[datasets.birds-val.classes]           # optional: folder/label -> the model's class name or index
"001.Black_footed_Albatross" = "Black-footed Albatross"
```

Every mistake is a :class:`ConfigError` with one line naming the file, the table and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidLabels
from .labels import check_count, read_labels

CONFIG_NAME = "relevance-explorer.toml"
CONFIG_ENV = "RELEVANCE_EXPLORER_CONFIG"

_MODEL_KEYS = {"source", "checkpoint", "labels", "num_classes", "preprocessing", "description", "seed"}
_PREP_KEYS = {"resize", "crop", "mean", "std", "interpolation"}
_DATASET_KEYS = {"path", "layout", "limit", "sample", "seed", "classes", "description"}
_LAYOUTS = ("auto", "imagefolder", "manifest", "folder")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    checkpoint: Path | None = None
    labels: Path | None = None
    num_classes: int | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    seed: int = 0  # for weights="untrained": the fingerprint of random weights is reproducible


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path
    layout: str = "auto"
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    classes: dict[str, str | int] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ProjectConfig:
    path: Path | None
    models: dict[str, ModelEntry] = field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)


def find_config(cwd: str | Path | None = None) -> Path | None:
    """``$RELEVANCE_EXPLORER_CONFIG`` (which must exist), else ``relevance-explorer.toml`` in ``cwd``."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"${CONFIG_ENV} points to {path.name!r}, which does not exist.")
        return path
    path = Path(cwd or os.getcwd()) / CONFIG_NAME
    return path if path.is_file() else None


def load_config(path: str | Path | None = None) -> ProjectConfig:
    """Read and validate the project file (an empty config when there is none)."""
    path = Path(path) if path is not None else find_config()
    if path is None:
        return ProjectConfig(None)
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{where} does not exist.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid TOML: {str(exc).splitlines()[0]}.") from exc
    unknown = set(data) - {"models", "datasets"}
    if unknown:
        raise ConfigError(f"{where}: unknown table {sorted(unknown)[0]!r} (known: models, datasets).")
    base = path.parent
    models = {n: _model(n, t, base, where) for n, t in _tables(data, "models", where).items()}
    datasets = {n: _dataset(n, t, base, where) for n, t in _tables(data, "datasets", where).items()}
    return ProjectConfig(path, models, datasets)


def _tables(data: dict, key: str, where: str) -> dict[str, dict]:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: '{key}' must be a table of named entries ([{key}.NAME]).")
    for name, table in section.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{key}.{name}] must be a table.")
    return section


def _check_keys(table: dict, known: set[str], label: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{label}: unknown key {key!r} (known: {', '.join(sorted(known))}).")


def _typed(table: dict, key: str, kind: type | tuple[type, ...], label: str, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{label}: '{key}' must be {name}, not {type(value).__name__}.")
    return value


def _resolve(base: Path, value: str) -> Path:
    """A path from the file: relative ones are taken from the file's own folder."""
    return Path(value) if Path(value).is_absolute() else (base / value).resolve()


def _file(table: dict, key: str, base: Path, label: str) -> Path | None:
    value = _typed(table, key, str, label)
    if value is None:
        return None
    path = _resolve(base, value)
    if not path.is_file():
        raise ConfigError(f"{label}: {key} file {Path(value).name!r} does not exist.")
    return path


def _model(name: str, t: dict, base: Path, where: str) -> ModelEntry:
    label = f"{where} [models.{name}]"
    _check_keys(t, _MODEL_KEYS, label)
    source = _typed(t, "source", str, label)
    if not source:
        raise ConfigError(f"{label}: 'source' is required (timm:NAME, torchvision:NAME, package.module:function).")
    from .model_sources import parse_source

    try:
        parse_source(source)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from exc
    num_classes = _typed(t, "num_classes", int, label)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"{label}: 'num_classes' must be at least 1, not {num_classes}.")
    labels = _file(t, "labels", base, label)
    if labels is not None:
        try:
            names = read_labels(labels)
            if num_classes is not None:
                check_count(names, num_classes, label)
        except InvalidLabels as exc:
            raise ConfigError(str(exc) if str(exc).startswith(label) else f"{label}: {exc}") from exc
    prep = _typed(t, "preprocessing", dict, label, {})
    _check_keys(prep, _PREP_KEYS, f"{label} preprocessing")
    for key in ("resize", "crop"):
        v = _typed(prep, key, int, f"{label} preprocessing")
        if v is not None and not 8 <= v <= 4096:
            raise ConfigError(f"{label} preprocessing: '{key}' must lie in [8, 4096], not {v}.")
    for key in ("mean", "std"):
        v = _typed(prep, key, list, f"{label} preprocessing")
        numbers = v is not None and all(isinstance(a, int | float) and not isinstance(a, bool) for a in v)
        if v is not None and (len(v) != 3 or not numbers):
            raise ConfigError(f"{label} preprocessing: '{key}' must be three numbers.")
        if key == "std" and v is not None and min(v) <= 0:
            raise ConfigError(f"{label} preprocessing: 'std' must be positive.")
    interp = _typed(prep, "interpolation", str, f"{label} preprocessing")
    if interp is not None and interp not in ("bilinear", "bicubic"):
        raise ConfigError(f"{label} preprocessing: 'interpolation' must be bilinear or bicubic, not {interp!r}.")
    return ModelEntry(name=name, source=source, checkpoint=_file(t, "checkpoint", base, label), labels=labels,
                      num_classes=num_classes, preprocessing=dict(prep),
                      description=_typed(t, "description", str, label, ""), seed=_typed(t, "seed", int, label, 0))


def _dataset(name: str, t: dict, base: Path, where: str) -> DatasetEntry:
    label = f"{where} [datasets.{name}]"
    _check_keys(t, _DATASET_KEYS, label)
    value = _typed(t, "path", str, label)
    if not value:
        raise ConfigError(f"{label}: 'path' is required (a folder or a .csv/.parquet manifest).")
    path = _resolve(base, value)
    if not path.exists():
        raise ConfigError(f"{label}: path {Path(value).name!r} does not exist.")
    layout = _typed(t, "layout", str, label, "auto")
    if layout not in _LAYOUTS:
        raise ConfigError(f"{label}: 'layout' must be one of {', '.join(_LAYOUTS)}, not {layout!r}.")
    for key in ("limit", "sample"):
        v = _typed(t, key, int, label)
        if v is not None and v < 1:
            raise ConfigError(f"{label}: '{key}' must be at least 1, not {v}.")
    classes = _typed(t, "classes", dict, label, {})
    for k, v in classes.items():
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ConfigError(f"{label} classes: {k!r} must map to a class name or index.")
    return DatasetEntry(name=name, path=path, layout=layout, limit=t.get("limit"), sample=t.get("sample"),
                        seed=_typed(t, "seed", int, label, 0), classes=dict(classes),
                        description=_typed(t, "description", str, label, ""))
