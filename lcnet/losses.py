"""Training loss of LCNet (paper section 2.4): L1 + lambda * VGG-19 content loss.

Images are (B, 3, H, W) RGB in [0, 1]. The content term compares VGG-19 features (up to
``conv3_3`` by default, as DeblurGAN does) of the ImageNet-normalised prediction and target.

VGG-19 ImageNet weights are never downloaded at run time. :func:`load_vgg19_features` reads
them from a path the user gives or from torchvision's cache file (``vgg19-dcbb9e9d.pth`` in
``torch.hub.get_dir()/checkpoints/``) and otherwise raises :class:`VGGWeightsNotFoundError`
saying where the file goes and where to fetch it. With ``content_weight=0`` VGG is never built.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "DEFAULT_VGG_LAYER",
    "VGG19_LAYERS",
    "VGG19_URL",
    "DeblurLoss",
    "VGGWeightsNotFoundError",
    "default_vgg19_path",
    "load_vgg19_features",
]

logger = logging.getLogger(__name__)

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"  # torchvision's VGG19_Weights.IMAGENET1K_V1 file
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILENAME}"
DEFAULT_VGG_LAYER = "conv3_3"  # DeblurGAN's choice (features[14], before its ReLU)
DEFAULT_CONTENT_WEIGHT = 0.1  # lambda of eq. 5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eq. 7 is 1 / (2 N_c) * ||phi(L) - phi(S)||^2, i.e. half the mean squared error.
CONTENT_LOSS_FACTOR = 0.5
VGG19_CONVS_PER_STAGE = (2, 2, 4, 4, 4)


def _vgg19_layer_indices() -> dict[str, int]:
    """Names of ``torchvision.models.vgg19().features`` entries: conv1_1 -> 0, relu1_1 -> 1, ..."""
    names: dict[str, int] = {}
    index = 0
    for stage, num_convs in enumerate(VGG19_CONVS_PER_STAGE, start=1):
        for conv in range(1, num_convs + 1):
            names[f"conv{stage}_{conv}"] = index
            names[f"relu{stage}_{conv}"] = index + 1
            index += 2
        names[f"pool{stage}"] = index
        index += 1
    return names


VGG19_LAYERS: dict[str, int] = _vgg19_layer_indices()


class VGGWeightsNotFoundError(FileNotFoundError):
    """The VGG-19 ImageNet weights are neither at the given path nor in torchvision's cache."""


def default_vgg19_path() -> Path:
    """Where torchvision caches the VGG-19 weights: ``torch.hub.get_dir()/checkpoints/...``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILENAME


def _check_layer(layer: str) -> int:
    if layer not in VGG19_LAYERS:
        raise ValueError(
            f"expected vgg_layer to be a VGG-19 layer name such as 'conv2_2', 'conv3_3', "
            f"'relu3_3', 'conv4_4' or 'conv5_4', got {layer!r}"
        )
    return VGG19_LAYERS[layer]


def _not_found(path: Path, given: bool) -> VGGWeightsNotFoundError:
    where = "the given path" if given else "torchvision's cache"
    return VGGWeightsNotFoundError(
        f"VGG-19 ImageNet weights not found at {where}: {path}. Nothing is downloaded at run "
        f"time. On a machine with network access fetch {VGG19_URL} and put it at {path} "
        f"(torchvision's cache, used when no path is given: {default_vgg19_path()}) or pass its "
        "path explicitly (DeblurLoss(vgg_weights=...)). Or train with the L1 loss alone: "
        "content weight 0 (--content-weight 0)."
    )


def load_vgg19_features(
    path: str | os.PathLike[str] | None = None, layer: str = DEFAULT_VGG_LAYER
) -> nn.Sequential:
    """VGG-19 ``features`` truncated after ``layer``, with ImageNet weights, frozen, in eval mode.

    Args:
        path: a torchvision VGG-19 state dict (``torch.save(vgg19().state_dict(), path)``, as
            in ``vgg19-dcbb9e9d.pth``). ``None`` means torchvision's cache file
            (:func:`default_vgg19_path`).
        layer: last layer kept, e.g. ``"conv2_2"``, ``"conv3_3"``, ``"relu3_3"``, ``"conv5_4"``
            (see ``VGG19_LAYERS``).

    Returns:
        ``nn.Sequential`` mapping ImageNet-normalised (B, 3, H, W) to the layer's features.
        Parameters have ``requires_grad=False``; ReLUs are not in-place.

    Raises:
        VGGWeightsNotFoundError: no file at ``path`` (or in the cache when ``path`` is None).
        ValueError: unknown ``layer``, or the file is not a VGG-19 state dict.
    """
    last = _check_layer(layer)
    file = Path(path) if path is not None else default_vgg19_path()
    if not file.is_file():
        raise _not_found(file, given=path is not None)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled non-tensor objects, ...: say which file
        raise ValueError(f"could not read VGG-19 weights from {file}: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"expected {file} to hold a VGG-19 state dict, got a {type(state).__name__}"
        )
    # Build on the meta device and take the loaded tensors as they are: no time spent on a
    # random initialisation of the 140 M parameters that the state dict replaces anyway.
    with torch.device("meta"):
        vgg = torchvision.models.vgg19(weights=None)
    try:
        vgg.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"expected {file} to hold a torchvision VGG-19 state dict; loading it failed: {exc}"
        ) from exc
    features = vgg.features[: last + 1]
    for module in features:
        if isinstance(module, nn.ReLU):
            module.inplace = False  # in-place ReLU would overwrite a feature we return
    features.requires_grad_(False)
    logger.info("Loaded VGG-19 features up to %s from %s", layer, file)
    return features.eval()


class DeblurLoss(nn.Module):
    """``L1(pred, target) + content_weight * content(pred, target)`` (paper eq. 5-7).

    ``content = 0.5 * mean((phi(pred) - phi(target))**2)`` with phi the VGG-19 features up to
    ``vgg_layer`` of ImageNet-normalised inputs; the factor 0.5 is the 1 / (2 N_c) of eq. 7
    (DeblurGAN's code uses the plain mean; with it the same lambda weighs the content twice
    as much).

    Inputs: pred and target of shape (B, 3, H, W), RGB in [0, 1], same shape. ``forward``
    returns the total (a scalar tensor) and stores detached parts in ``last_terms``
    (``{"l1", "content", "total"}``); :meth:`terms` returns the parts with their graph.

    The VGG is frozen and stays in eval mode whatever ``train()`` is called with. With
    ``content_weight == 0`` it is never built or loaded, so no weights are needed.

    Args:
        content_weight: lambda >= 0 (0.1 in the paper).
        vgg_weights: path of the VGG-19 state dict; None: torchvision's cache file.
        vgg_layer: last VGG-19 layer used (see :func:`load_vgg19_features`).
        frequency_weight: weight >= 0 of a frequency-domain L1 term (not in the paper; MIMO-UNet,
            Cho et al. 2021): mean |Re| + |Im| of ``rfft2(pred) - rfft2(target)``. It rewards
            restoring high frequencies, which the pixel L1 weighs little; 0 (the default)
            leaves it out, and ``terms`` then has no ``"frequency"`` key.
    """

    def __init__(
        self,
        content_weight: float = DEFAULT_CONTENT_WEIGHT,
        vgg_weights: str | os.PathLike[str] | None = None,
        vgg_layer: str = DEFAULT_VGG_LAYER,
        frequency_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if (
            isinstance(frequency_weight, bool)
            or not isinstance(frequency_weight, numbers.Real)
            or not math.isfinite(frequency_weight)
            or frequency_weight < 0
        ):
            raise ValueError(
                f"DeblurLoss: expected frequency_weight to be finite and >= 0, "
                f"got {frequency_weight!r}"
            )
        self.frequency_weight = float(frequency_weight)
        if isinstance(content_weight, bool) or not isinstance(content_weight, numbers.Real):
            raise ValueError(
                f"DeblurLoss: expected content_weight to be a float, got {content_weight!r}"
            )
        if not math.isfinite(content_weight) or content_weight < 0:
            raise ValueError(
                f"DeblurLoss: expected content_weight to be finite and >= 0, got {content_weight}"
            )
        _check_layer(vgg_layer)
        self.content_weight = float(content_weight)
        self.vgg_layer = vgg_layer
        self.vgg: nn.Sequential | None = None
        if self.content_weight > 0:
            self.vgg = load_vgg19_features(vgg_weights, vgg_layer)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.last_terms: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> DeblurLoss:
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # a frozen feature extractor: never in training mode
        return self

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        assert self.vgg is not None  # internal invariant: only called when content_weight > 0
        return self.vgg((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"l1", "content", "total"}`` as scalar tensors; gradients flow to ``pred``."""
        if pred.shape != target.shape:
            raise ValueError(
                f"DeblurLoss: expected pred and target of the same shape, got pred "
                f"{tuple(pred.shape)} and target {tuple(target.shape)}"
            )
        l1 = F.l1_loss(pred, target)
        if self.vgg is None:
            content = l1.new_zeros(())
        else:
            if pred.dim() != 4 or pred.shape[1] != len(IMAGENET_MEAN):
                raise ValueError(
                    f"DeblurLoss: expected pred of shape (B, 3, H, W) for the VGG content "
                    f"loss, got {tuple(pred.shape)}"
                )
            with torch.no_grad():
                target_features = self._features(target)
            content = CONTENT_LOSS_FACTOR * F.mse_loss(self._features(pred), target_features)
        total = l1 + self.content_weight * content
        terms = {"l1": l1, "content": content}
        if self.frequency_weight > 0:
            diff = torch.fft.rfft2(pred.float()) - torch.fft.rfft2(target.float())
            terms["frequency"] = (diff.real.abs() + diff.imag.abs()).mean()
            total = total + self.frequency_weight * terms["frequency"]
        terms["total"] = total
        return terms

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.terms(pred, target)
        self.last_terms = {name: value.detach() for name, value in terms.items()}
        return terms["total"]

    def extra_repr(self) -> str:
        extra = f", frequency_weight={self.frequency_weight}" if self.frequency_weight else ""
        return f"content_weight={self.content_weight}, vgg_layer={self.vgg_layer!r}{extra}"
