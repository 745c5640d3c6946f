"""Region features: dense patch features in the joint embedding space, pooled with Grad-ECLIP maps of phrases.

For a ViT image tower pooled at its class token, the dense feature of patch :math:`i` is the class token's path
to the embedding with the last block's attention output replaced by the patch's own projected value (the
MaskCLIP-style dense feature the Grad-ECLIP authors pool; see
:class:`~captum_gradeclip.baselines.MaskCLIPSimilarity` for the formula). :class:`DenseImageEncoder` computes
the image embedding and these dense features from ONE forward pass, with gradients (for training).

The region feature of a phrase is the average of the image's dense features weighted by the phrase's
Grad-ECLIP map normalised to sum 1 (:func:`pool_regions`); :func:`phrase_maps` computes the maps of every phrase
of a batch with one :meth:`~captum_gradeclip.GradECLIP.attribute_all` call, without gradients through the maps.

Examples:
    >>> from captum_gradeclip.zoo import load_shapes_clip
    >>> clip = load_shapes_clip()
    >>> images = clip.normalize(torch.rand(2, 3, 64, 64))
    >>> embedding, dense = DenseImageEncoder(clip.model)(images)
    >>> embedding.shape, dense.shape                       # (N, E), (N, h * w, E)
    (torch.Size([2, 128]), torch.Size([2, 64, 128]))
    >>> phrases = clip.encode_texts(["a red circle", "a blue square"])
    >>> maps = phrase_maps(clip.model, images, phrases)   # (N, P, h, w), no gradients
    >>> regions = pool_regions(dense, normalize_maps(maps[:, 0]))   # (N, E): each image's "red circle" region
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import image_tower
from ..adapters.attention import attention_adapter, full_width
from ..errors import LayerNotExecutedError, UnsupportedModelError
from ..grad_eclip import GradECLIP
from ..scorers import ImageTextSimilarity
from ..token_attribution import first_tensor

__all__ = ["DenseImageEncoder", "phrase_maps", "normalize_maps", "pool_regions", "box_weights", "mask_weights"]


class DenseImageEncoder(nn.Module):
    r"""Image embeddings and dense patch features in the joint embedding space, from one forward pass.

    ``forward(images)`` returns ``(embedding, dense)``: the image tower's embedding ``(N, E)`` (not normalised,
    exactly what the tower's adapter encodes) and the dense features ``(N, h * w, E)`` of the patches in
    row-major grid order. Both keep their graph, so losses on either train the tower. Hooks on the last block
    and its attention module live only during the call (removed in ``finally``); the model is never modified.

    Supported: image towers with a pooling query whose last block has a known path to the embedding
    (``Tower.pooled_tail``: open_clip ``VisionTransformer`` with class-token pooling); anything else raises
    :class:`~captum_gradeclip.UnsupportedModelError` at construction.

    Args:
        model (nn.Module): the CLIP model (e.g. an ``open_clip.CLIP``).

    Examples:
        >>> from captum_gradeclip.zoo import load_shapes_clip
        >>> encoder = DenseImageEncoder(load_shapes_clip().model)
        >>> embedding, dense = encoder(torch.zeros(1, 3, 64, 64))
        >>> dense.shape                                     # an 8 x 8 patch grid
        torch.Size([1, 64, 128])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        tower = image_tower(model)
        block = tower.blocks()[-1]
        attention = tower.resolve([block])[0]
        tail = tower.pooled_tail(attention)
        if tail is None:
            raise UnsupportedModelError(
                f"region features need the path from the last attention module of the image tower to the embedding "
                f"(class-token pooled ViTs); the {type(tower).__name__} adapter does not provide it")
        self.model = model
        self._tower = tower
        self._block = block
        self._attention = attention
        self._tail = tail
        self._adapter = attention_adapter(attention)
        self._batch_first = bool(getattr(self._adapter, "batch_first", True))

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Embeddings ``(N, E)`` and dense patch features ``(N, h * w, E)`` of normalised images."""
        seen: Dict[str, Any] = {}

        def block_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
            x = first_tensor(args, kwargs)
            seen["x"] = x if self._batch_first else x.transpose(0, 1)

        def attention_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> None:
            seen["args"], seen["kwargs"] = args, kwargs

        handles = [self._block.register_forward_pre_hook(block_hook, with_kwargs=True),
                   self._attention.register_forward_hook(attention_hook, with_kwargs=True)]
        try:
            self._tower.validate(images)
            embedding = self._tower.encode(images)
        finally:
            for h in handles:
                h.remove()
        if "x" not in seen or "args" not in seen:
            raise LayerNotExecutedError(
                f"the last block of the image tower ({type(self._block).__name__}) did not run during the forward")
        _, _, v = self._adapter.qkv(seen["args"], seen["kwargs"])
        dense = self._tail(seen["x"], self._adapter.project(full_width(v)))  # (N, L, E)
        layout = self._tower.layout(images)
        keep = layout.report_mask[0]
        return embedding, dense[:, keep]

    @property
    def tower(self) -> Any:
        """The image tower adapter."""
        return self._tower


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block and restore every submodule's own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def phrase_maps(model: nn.Module, images: Tensor, phrase_features: Tensor, *, chunk_size: int | None = None
                ) -> Tensor:
    """Grad-ECLIP maps of every phrase on every image, from one :meth:`~captum_gradeclip.GradECLIP.attribute_all`.

    The image tower runs in eval mode during the call (no dropout in the maps; each module's mode is restored
    afterwards) and no gradient reaches the model's parameters or the returned maps.

    Args:
        model (nn.Module): the CLIP model.
        images (Tensor): normalised images ``(N, 3, H, W)``.
        phrase_features (Tensor): phrase embeddings ``(P, E)`` (detached; normalised or not).
        chunk_size (int, optional): targets per batched backward (see :class:`~captum_gradeclip.GradECLIP`).

    Returns:
        Tensor: ``(N, P, h, w)`` non-negative maps on the patch grid, detached.
    """
    scorer = ImageTextSimilarity(model, phrase_features.detach().float())
    explainer = GradECLIP(scorer, chunk_size=chunk_size)
    with _eval_mode(explainer.tower.root):
        maps = explainer.attribute_all(images)
    return maps.detach()


def normalize_maps(maps: Tensor, eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    """Normalise non-negative maps to sum 1 over their grid.

    Args:
        maps (Tensor): ``(..., h, w)`` non-negative maps.
        eps (float, optional): a map whose sum is at most ``eps`` is "blank". Default: 1e-12

    Returns:
        tuple: ``(weights, valid)``: ``weights`` ``(..., h * w)`` summing to 1 (all zero for a blank map) and
        ``valid`` ``(...)`` bool, False for blank maps.

    Examples:
        >>> w, ok = normalize_maps(torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]]))
        >>> w.tolist(), ok.tolist()
        ([[0.25, 0.75], [0.0, 0.0]], [True, False])
    """
    if maps.dim() < 2:
        raise ValueError(f"maps must be (..., h, w), got shape {tuple(maps.shape)}")
    flat = maps.detach().flatten(-2).float().clamp(min=0)
    total = flat.sum(-1, keepdim=True)
    valid = total[..., 0] > eps
    weights = torch.where(valid[..., None], flat / total.clamp(min=eps), torch.zeros_like(flat))
    return weights, valid


def pool_regions(dense: Tensor, weights: Tensor | Tuple[Tensor, Tensor]) -> Tensor:
    r"""Region features: dense features averaged with map weights, :math:`r = \sum_i w_i d_i`.

    Args:
        dense (Tensor): ``(N, h * w, E)`` dense features (with or without gradients).
        weights (Tensor or tuple): ``(N, h * w)`` weights (one region per image) or ``(N, R, h * w)`` (R regions
            per image), e.g. from :func:`normalize_maps` (its ``(weights, valid)`` tuple is accepted too).

    Returns:
        Tensor: ``(N, E)`` or ``(N, R, E)`` region features (not normalised); gradients flow to ``dense`` only.

    Examples:
        >>> d = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])      # 1 image, 2 patches, E = 2
        >>> pool_regions(d, torch.tensor([[0.25, 0.75]])).tolist()
        [[0.25, 0.75]]
    """
    if isinstance(weights, tuple):
        weights = weights[0]
    weights = weights.detach().to(dense.dtype)
    if dense.dim() != 3 or weights.shape[0] != dense.shape[0] or weights.shape[-1] != dense.shape[1]:
        raise ValueError(f"dense features (N, h*w, E) {tuple(dense.shape)} and weights (N, [R,] h*w) "
                         f"{tuple(weights.shape)} do not match")
    if weights.dim() == 2:
        return torch.einsum("np,npe->ne", weights, dense)
    if weights.dim() == 3:
        return torch.einsum("nrp,npe->nre", weights, dense)
    raise ValueError(f"weights must be (N, h*w) or (N, R, h*w), got shape {tuple(weights.shape)}")


def box_weights(boxes: Tensor, image_size: Tuple[int, int], grid: Tuple[int, int]) -> Tensor:
    """Patch weights of boxes: the fraction of each patch that a box covers, normalised to sum 1.

    Args:
        boxes (Tensor): ``(..., 4)`` boxes ``(x0, y0, x1, y1)`` in pixels (end-exclusive).
        image_size (tuple): ``(H, W)`` of the image in pixels.
        grid (tuple): ``(h, w)`` patch grid.

    Returns:
        Tensor: ``(..., h * w)`` weights summing to 1 (all zero for an empty or ``nan`` box).
    """
    h, w = image_size
    ys = torch.arange(h, dtype=torch.float32, device=boxes.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=boxes.device) + 0.5
    b = boxes.float()
    inside_x = (xs >= b[..., 0:1]) & (xs < b[..., 2:3])  # (..., W)
    inside_y = (ys >= b[..., 1:2]) & (ys < b[..., 3:4])  # (..., H)
    masks = inside_y[..., :, None] & inside_x[..., None, :]
    return mask_weights(masks, grid)


def mask_weights(masks: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Patch weights of pixel masks: the fraction of each patch inside the mask, normalised to sum 1.

    Args:
        masks (Tensor): ``(..., H, W)`` bool masks whose size is a multiple of the grid.
        grid (tuple): ``(h, w)`` patch grid.

    Returns:
        Tensor: ``(..., h * w)`` weights summing to 1 (all zero for an empty mask).

    Examples:
        >>> m = torch.zeros(4, 4, dtype=torch.bool); m[:2, :1] = True
        >>> mask_weights(m, (2, 2)).tolist()
        [1.0, 0.0, 0.0, 0.0]
    """
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    cover = F.adaptive_avg_pool2d(flat, grid).reshape(*lead, grid[0], grid[1])
    return normalize_maps(cover)[0]
