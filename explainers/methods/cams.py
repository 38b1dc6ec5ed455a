"""Class activation maps through pytorch-grad-cam (pip ``grad-cam``).

We adapt the library rather than reimplement it: the map we return is exactly
the array the library's own ``cam(input_tensor, targets, ...)`` call returns
(per image min-max scaled to [0, 1] and resized to the input size by the
library).  What we add: the default target layer per model family, a layer
chosen by name, ViT token reshaping, the native resolution of the map, and a
private, hook-clean view of the shared model per CAM class (:func:`model_guard`
with ``view_key``): the library's hooks and layer swaps never touch the model
other sessions use, and one slow CAM never blocks another method.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..capabilities import CONV_MAP, capabilities_of
from ..guard import model_guard
from ..layers import cam_layer, named_layer, vit_reshape_transform
from ..models import ModelBundle
from ..progress import ForwardProgress
from ..registry import MethodOutput, MethodSpec, Option, register

LAYER_OPTION = Option("layer", "str", "", help="Target layer by name (empty: the model family's default: "
                      "last conv stage for CNNs, last block's norm1 for ViTs).")
SMOOTH_OPTIONS = (
    Option("aug_smooth", "bool", False, help="Test-time augmentation smoothing (6x slower)."),
    Option("eigen_smooth", "bool", False, help="First principal component of the weighted activations."),
)


def run_cam(cam_class, bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor,
            opts: dict[str, Any], **cam_kwargs: Any) -> MethodOutput:
    """Run one pytorch-grad-cam class on a batch with per-image targets.

    ``_configure`` (optional) is called with the CAM object before the call, for settings the library
    takes as attributes rather than constructor arguments (Score-CAM's ``batch_size``).  The CAM runs on
    the private view named after its class.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    configure = cam_kwargs.pop("_configure", None)
    layer_name = cam_layer(bundle, opts.get("layer", ""), cam_class.__name__.lower())
    with model_guard(bundle, view_key=f"cam:{cam_class.__name__}") as model:
        layer = named_layer(model, layer_name)
        reshape = vit_reshape_transform(bundle) if capabilities_of(bundle).tokens else None
        cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape, **cam_kwargs)
        if configure is not None:
            configure(cam)
        try:
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
                            aug_smooth=opts.get("aug_smooth", False), eigen_smooth=opts.get("eigen_smooth", False))
            acts = cam.activations_and_grads.activations
            native = tuple(acts[0].shape[-2:]) if acts else None
        finally:
            # Not ``with cam:``: its __exit__ swallows IndexError, which would hide bugs.
            cam.activations_and_grads.release()
    return MethodOutput(attribution=torch.from_numpy(grayscale), native_resolution=native,
                        extras={"layer": layer_name})


def _gradcam(bundle, x, targets, opts):
    # Plain Grad-CAM on a CNN runs natively: importing pytorch-grad-cam costs ~7 s cold (see gradcam_native).
    if not (opts.get("aug_smooth") or opts.get("eigen_smooth") or capabilities_of(bundle).tokens):
        from .gradcam_native import gradcam_maps

        layer_name = cam_layer(bundle, opts.get("layer", ""), "gradcam")
        maps, native = gradcam_maps(bundle, x, targets, layer_name)
        return MethodOutput(attribution=maps, native_resolution=native, extras={"layer": layer_name})
    from pytorch_grad_cam import GradCAM

    return run_cam(GradCAM, bundle, x, targets, opts)


register(MethodSpec(
    id="gradcam", name="Grad-CAM", family="cam", fn=_gradcam,
    options=(LAYER_OPTION, *SMOOTH_OPTIONS), normalized=True,
    description="Gradient-weighted class activation map (Selvaraju et al. 2017): pytorch-grad-cam's map, computed "
                "natively (the library only for smoothing and ViTs).",
))


# --------------------------------------------------------------------------- gradient-weighted variants
# Each is the library's class as is; only the spec (options, families) is ours.


def _simple(cam_name: str):
    """A method function running ``pytorch_grad_cam.<cam_name>`` through :func:`run_cam`."""

    def fn(bundle, x, targets, opts):
        import pytorch_grad_cam

        return run_cam(getattr(pytorch_grad_cam, cam_name), bundle, x, targets, opts)

    fn.__name__ = f"_{cam_name.lower()}"
    return fn


LAYERCAM_LAYER_OPTION = Option("layer", "str", "", help="Target layer by name (empty: the family default). "
                               "LayerCAM at an early layer (e.g. ResNet 'layer1', EfficientNet 'blocks.1') gives "
                               "the high-resolution maps SRD compares against.")

for _id, _cls, _name, _desc, _layer_opt in (
    ("gradcam++", "GradCAMPlusPlus", "Grad-CAM++", "Grad-CAM with second-order channel weights "
     "(Chattopadhyay et al. 2018) via pytorch-grad-cam.", LAYER_OPTION),
    ("xgradcam", "XGradCAM", "XGrad-CAM", "Axiom-based Grad-CAM: activation-normalised gradient weights "
     "(Fu et al. 2020) via pytorch-grad-cam.", LAYER_OPTION),
    ("layercam", "LayerCAM", "LayerCAM", "Element-wise positive-gradient weighting (Jiang et al. 2021) via "
     "pytorch-grad-cam; meaningful at early layers too.", LAYERCAM_LAYER_OPTION),
    ("hirescam", "HiResCAM", "HiResCAM", "Gradient x activation element-wise, then channel sum (Draelos & Carin "
     "2020) via pytorch-grad-cam; faithful to the model's computation.", LAYER_OPTION),
):
    register(MethodSpec(id=_id, name=_name, family="cam", fn=_simple(_cls), options=(_layer_opt, *SMOOTH_OPTIONS),
                        normalized=True, description=_desc))


# --------------------------------------------------------------------------- EigenCAM (class-agnostic)


def _eigencam(bundle, x, targets, opts):
    from pytorch_grad_cam import EigenCAM

    return run_cam(EigenCAM, bundle, x, targets, opts)


register(MethodSpec(
    id="eigencam", name="EigenCAM", family="cam", fn=_eigencam, options=(LAYER_OPTION, SMOOTH_OPTIONS[0]),
    normalized=True,
    description="First principal component of the layer's activations (Muhammad & Yeasin 2020) via "
                "pytorch-grad-cam. Class-agnostic: the same map for every target class.",
))


# --------------------------------------------------------------------------- FullGrad


@functools.cache
def batched_fullgrad_class():
    """pytorch-grad-cam's FullGrad with its per-layer aggregation done on whole tensors.

    The library min-max normalises every channel of every bias-gradient map and resizes each to the input
    size with one ``cv2.resize`` call per channel before summing: 21 011 calls on EfficientNet-Lite0, which
    took 4.3 of FullGrad's 4.8 s per image here (6.6 s on ResNet-50).  We normalise per channel on the
    tensor, sum the channels, then upsample once per layer (bilinear, half-pixel centres, as cv2's
    INTER_LINEAR); resizing is linear, so the sum is the same.  Hooks, bias terms, targets, the input term
    and the final aggregation stay the library's; with ``eigen_smooth`` the library's own path runs.  A test
    checks the result against the library's FullGrad.
    """
    from pytorch_grad_cam import FullGrad

    class BatchedFullGrad(FullGrad):
        def compute_cam_per_layer(self, input_tensor, target_category, eigen_smooth):
            if eigen_smooth:
                return super().compute_cam_per_layer(input_tensor, target_category, eigen_smooth)
            width, height = self.get_target_width_height(input_tensor)
            maps = [(input_tensor.grad * input_tensor).detach().abs()]
            maps += [(torch.as_tensor(bias, device=g.device)[None, :, None, None] * g).abs()
                     for bias, g in zip(self.bias_data, self.activations_and_grads.gradients, strict=True)]
            total = torch.zeros(input_tensor.shape[0], 1, height, width)
            for m in maps:
                m = m.float().cpu()
                lo, hi = m.flatten(2).aminmax(dim=-1)  # per image and channel, as the library's loop
                summed = ((m - lo[..., None, None]) / (1e-7 + (hi - lo)[..., None, None])).sum(1, keepdim=True)
                if summed.shape[-2:] != (height, width):
                    summed = torch.nn.functional.interpolate(summed, size=(height, width), mode="bilinear",
                                                             align_corners=False)
                total += summed
            return total.numpy()

    return BatchedFullGrad


def _fullgrad(bundle, x, targets, opts):
    # FullGrad ignores target_layers (it uses every Conv2d/BatchNorm2d bias); the library prints a
    # warning for a non-empty list, so we pass none and name no layer.  compute_input_gradient makes
    # the library set requires_grad on its input: give it a private copy.  On timm's fused BN+act
    # layers the library finds no bias at all, hence the library view (see library_view.py).
    with model_guard(bundle, view_key="cam:fullgrad", form="guided") as model:
        cam = batched_fullgrad_class()(model=model, target_layers=[])
        try:
            grayscale = _call_cam(cam, x.detach().clone(), targets, opts)
        finally:
            cam.activations_and_grads.release()
    return MethodOutput(attribution=torch.from_numpy(grayscale), native_resolution=tuple(x.shape[-2:]),
                        extras={"layer": "all biases", "bias_layers": len(cam.bias_data)})


register(MethodSpec(
    id="fullgrad", name="FullGrad", family="cam", fn=_fullgrad, options=(SMOOTH_OPTIONS[0],),
    needs=CONV_MAP, normalized=True,
    description="Full-gradient representation: input-gradient x input plus bias-gradients of every conv/BN layer "
                "(Srinivas & Fleuret 2019) via pytorch-grad-cam. CNNs only (needs 2-D biases).",
))


def _call_cam(cam, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]):
    """The library's own call with per-image ClassifierOutputTargets."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
               aug_smooth=opts.get("aug_smooth", False), eigen_smooth=opts.get("eigen_smooth", False))


# --------------------------------------------------------------------------- Score-CAM / Ablation-CAM

CPU_TOP_K = 128  # channels used on a CPU when top_k is "auto": ~10x fewer forward passes on Lite0/ResNet-50 heads

TOP_K_OPTION = Option(
    "top_k", "int", 0, min=-1, max=4096, step=16,
    help=f"Use only the k channels with the highest mean activation (one forward pass per channel). "
         f"0 = auto: all channels on a GPU, the top {CPU_TOP_K} on a CPU (all would take minutes there); "
         f"-1 = all channels (identical to the library's own output).",
)
BATCH_OPTION = Option("batch_size", "int", 32, min=1, max=1024, step=8,
                      help="Masked/ablated copies per forward pass, on the selected device.")


def resolve_top_k(top_k: int, device: torch.device | str) -> int | None:
    """The number of channels to use, or None for all (see :data:`TOP_K_OPTION`)."""
    if top_k < 0:
        return None
    if top_k == 0:
        return None if torch.device(device).type == "cuda" else CPU_TOP_K
    return top_k


def top_channels(activations, k: int) -> torch.Tensor:
    """[B, k] indices of each image's k channels with the highest spatial-mean activation."""
    acts = torch.as_tensor(activations)
    return acts.flatten(2).mean(-1).topk(k, dim=-1).indices


def _scorecam_class():
    from pytorch_grad_cam import ScoreCAM

    class TopKScoreCAM(ScoreCAM):
        """The library's ScoreCAM restricted to the top-k channels per image (all when top_k is None).

        Unselected channels get weight 0; the softmax over channel scores runs over the selected ones
        only.  With all channels this is exactly ``ScoreCAM.get_cam_weights``.
        """

        top_k: int | None = None

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            import numpy as np

            b, c = activations.shape[:2]
            k = c if self.top_k is None else min(self.top_k, c)
            steps = -(-k // getattr(self, "batch_size", 16))
            with ForwardProgress(self.model, b * steps, "Score-CAM forward passes"):
                if k == c:
                    return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)
                idx = top_channels(activations, k).numpy()
                weights = np.zeros((b, c), dtype=np.float32)
                for i in range(b):
                    sub = activations[i:i + 1, idx[i]]
                    weights[i, idx[i]] = super().get_cam_weights(input_tensor[i:i + 1], target_layer,
                                                                 [targets[i]], sub, grads)[0]
                return weights

    return TopKScoreCAM


def _scorecam(bundle, x, targets, opts):
    cls = _scorecam_class()
    top_k = resolve_top_k(opts["top_k"], bundle.device)

    def configure(cam):
        cam.batch_size, cam.top_k = opts["batch_size"], top_k

    out = run_cam(cls, bundle, x, targets, opts, _configure=configure)
    out.extras["top_k"] = top_k if top_k is not None else "all"
    return out


def _ablation_classes():
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
    from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

    def topk_layer(base):
        class TopKAblationLayer(base):
            """Ablates only the top-k channels by mean activation; the others keep the original score (weight 0).

            With top_k None it defers to the library's selection (all channels at ratio 1.0).
            """

            top_k: int | None = None

            def activations_to_be_ablated(self, activations, ratio_channels_to_ablate=1.0):
                import numpy as np

                if self.top_k is None or self.top_k >= activations.shape[0]:
                    return super().activations_to_be_ablated(activations, ratio_channels_to_ablate)
                self.indices = np.int32(top_channels(activations[None], self.top_k)[0].numpy())
                return self.indices

        return TopKAblationLayer

    class SafeAblationCAM(AblationCAM):
        """The library's AblationCAM, but the target layer is put back even when a forward pass fails.

        The library swaps the target layer for its ablation layer and swaps it back only on success;
        on the shared model an exception would otherwise leave the model broken for every session.
        """

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            c = activations.shape[1]
            top_k = self.ablation_layer.top_k
            k = c if top_k is None else min(top_k, c)
            steps = -(-k // self.batch_size)
            try:
                # one forward for the original scores, then one per batch of ablated channels per image
                with ForwardProgress(self.model, 1 + input_tensor.shape[0] * steps, "Ablation-CAM forward passes"):
                    return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)
            except BaseException:
                replace_layer_recursive(self.model, self.ablation_layer, target_layer)
                raise

    return SafeAblationCAM, topk_layer(AblationLayer), topk_layer(AblationLayerVit)


def _ablationcam(bundle, x, targets, opts):
    cam_cls, layer_cls, vit_layer_cls = _ablation_classes()
    layer = (vit_layer_cls if capabilities_of(bundle).tokens else layer_cls)()
    layer.top_k = resolve_top_k(opts["top_k"], bundle.device)
    out = run_cam(cam_cls, bundle, x, targets, opts, ablation_layer=layer, batch_size=opts["batch_size"])
    out.extras["top_k"] = layer.top_k if layer.top_k is not None else "all"
    return out


SLOW_NOTE = (" Slow on a CPU: one forward pass per channel (1280 at Lite0's and 2048 at ResNet-50's default layer); "
             "the top_k option uses fewer.")

register(MethodSpec(
    id="scorecam", name="Score-CAM", family="cam", fn=_scorecam,
    options=(LAYER_OPTION, TOP_K_OPTION, BATCH_OPTION, *SMOOTH_OPTIONS),
    normalized=True,
    description="Channel weights from the target score of the input masked by each upsampled activation "
                "(Wang et al. 2020) via pytorch-grad-cam." + SLOW_NOTE,
))
register(MethodSpec(
    id="ablationcam", name="Ablation-CAM", family="cam", fn=_ablationcam,
    options=(LAYER_OPTION, TOP_K_OPTION, BATCH_OPTION, *SMOOTH_OPTIONS),
    normalized=True,
    description="Channel weights from the score drop when each channel is zeroed (Desai & Ramaswamy 2020) via "
                "pytorch-grad-cam." + SLOW_NOTE,
))


# --------------------------------------------------------------------------- Guided Grad-CAM


def guided_backprop_maps(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor):
    """pytorch-grad-cam's ``GuidedBackpropReLUModel`` per image: [B, H, W, 3] numpy, signed.

    The library swaps every ``nn.ReLU`` for its guided ReLU and back for *new* ``nn.ReLU()``
    modules, which would drop ``inplace`` flags and module identity; it runs on a private view, and we
    put the original module objects back so the cached view stays the model's twin.  It also explains
    only image 0 of a batch, hence the loop.
    The library guides only modules named ``ReLU``: EfficientNet-Lite's ReLU6 layers are guided
    through the library view (ReLU then clamp at 6, see library_view.py).
    """
    import numpy as np
    from pytorch_grad_cam import GuidedBackpropReLUModel

    with model_guard(bundle, view_key="cam:guided-backprop", form="guided") as model:
        relus = [(parent, name, child) for parent in model.modules()
                 for name, child in parent._modules.items() if isinstance(child, torch.nn.ReLU)]
        try:
            gb = GuidedBackpropReLUModel(model=model, device=x.device)
            maps = [gb(x[i:i + 1].detach().clone(), target_category=int(t)) for i, t in enumerate(targets)]
        finally:
            for parent, name, child in relus:
                parent._modules[name] = child
    return np.stack(maps)


def _guided_gradcam(bundle, x, targets, opts):
    from pytorch_grad_cam import GradCAM

    cam = run_cam(GradCAM, bundle, x, targets, opts)
    gb = torch.from_numpy(guided_backprop_maps(bundle, x, targets))  # [B, H, W, 3]
    # Selvaraju et al. 2017, Sec. 3.1: Guided Grad-CAM = guided backprop (x) upsampled Grad-CAM,
    # as in the library's cam.py (cam_mask * gb); channels summed to one signed map.
    cam.attribution = (gb * cam.attribution[..., None]).sum(-1)
    cam.native_resolution = tuple(x.shape[-2:])
    return cam


register(MethodSpec(
    id="guided-gradcam", name="Guided Grad-CAM", family="cam", fn=_guided_gradcam,
    options=(LAYER_OPTION, *SMOOTH_OPTIONS), needs=CONV_MAP, signed=True,
    description="Guided backpropagation multiplied by the upsampled Grad-CAM (Selvaraju et al. 2017) via "
                "pytorch-grad-cam; channel-summed, signed. CNNs only; EfficientNet-Lite's ReLU6 "
                "layers are guided as ReLU then clamp at 6.",
))
