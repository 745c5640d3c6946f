"""Helpers to use our maps and explanation functions with ``captum.metrics``."""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple, Union

from torch import Tensor

from ._utils import as_spatial_maps, upsample_maps


def expand_to_input(maps: Tensor, inputs: Tensor, mode: str = "bilinear") -> Tensor:
    r"""Upsample ``(N, 1, h, w)`` maps to the image size and repeat them over channels.

    ``captum.metrics.infidelity`` asserts ``inputs.shape == attributions.shape``,
    so a patch-grid map must be resized *and* expanded over the channels. The
    same map value is used for every channel; since infidelity multiplies the
    attribution by the perturbation and sums over all elements, this scales
    the attribution by roughly ``C``, so use ``normalize=True`` there.

    Args:
        maps (Tensor): ``(N, 1, h, w)`` or ``(N, h, w)`` maps.
        inputs (Tensor): ``(N, C, H, W)`` images (only the shape, device and
            dtype are used).
        mode (str, optional): ``"bilinear"``, ``"bicubic"``, ``"nearest"``,
            ``"nearest-exact"`` or ``"area"`` (``align_corners=False`` for
            bilinear/bicubic). Default: ``"bilinear"``

    Returns:
        Tensor: A new contiguous tensor of shape ``inputs.shape`` (detached).

    Raises:
        ValueError: If ``inputs`` is not 4-D, the batch sizes differ, the maps
            have an unsupported shape or non-finite values, or ``mode`` is
            unknown.
        TypeError: Arguments of an unsupported type.

    Examples::

        >>> import torch
        >>> expand_to_input(torch.ones(2, 1, 7, 7), torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 3, 224, 224])
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor, got {type(inputs).__name__}.")
    if inputs.dim() != 4:
        raise ValueError(f"`inputs` must have shape (N, C, H, W); got {tuple(inputs.shape)}.")
    maps = as_spatial_maps(maps, inputs.shape[0]).detach()
    dtype = inputs.dtype if inputs.is_floating_point() else maps.dtype
    maps = maps.to(device=inputs.device, dtype=dtype)
    up = upsample_maps(maps, (inputs.shape[-2], inputs.shape[-1]), mode=mode)
    return up.expand(inputs.shape).contiguous()


def tuple_output(
    explain_fn: Callable[..., Union[Tensor, Tuple[Tensor, ...]]],
) -> Callable[..., Tuple[Tensor, ...]]:
    r"""Wrap an explanation function so it always returns a tuple of tensors.

    ``captum.metrics.sensitivity_max`` iterates over the explanation's output
    without converting a bare tensor into a tuple: with a bare ``(N, ...)``
    tensor it iterates over the *batch*, which fails for ``N > 1`` and, for
    ``N = 1``, silently returns ``sqrt(n_perturb_samples)`` times the true
    value. Wrapping the function avoids both.

    Args:
        explain_fn (Callable): Any ``explain_fn(inputs, **kwargs)`` returning a
            tensor, or a tuple/list of tensors (e.g. a bound
            ``GradECLIP.attribute`` or ``LayerGradCam.attribute``).

    Returns:
        Callable: A function with the same arguments returning a tuple
        (a bare tensor ``t`` becomes ``(t,)``; a list becomes a tuple).

    Raises:
        TypeError: If ``explain_fn`` is not callable (at wrap time), or it
            returns something other than a tensor or a sequence of tensors
            (at call time).

    Examples::

        >>> import torch
        >>> f = tuple_output(lambda x, **kw: x[0].sum(1, keepdim=True))
        >>> type(f((torch.ones(2, 3, 4, 4),)))
        <class 'tuple'>
    """
    if not callable(explain_fn):
        raise TypeError(f"`explain_fn` must be callable, got {type(explain_fn).__name__}.")

    @functools.wraps(explain_fn)
    def wrapped(*args: Any, **kwargs: Any) -> Tuple[Tensor, ...]:
        out = explain_fn(*args, **kwargs)
        if isinstance(out, Tensor):
            return (out,)
        if isinstance(out, (tuple, list)) and all(isinstance(o, Tensor) for o in out):
            return tuple(out)
        raise TypeError(
            "The explanation function must return a Tensor or a tuple/list of Tensors; "
            f"got {type(out).__name__}."
        )

    return wrapped
