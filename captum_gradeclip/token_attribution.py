"""The template every token-level explainer of this package follows (GradECLIP and the baselines).

A token attribution is a Captum ``LayerAttribution`` on a scorer of this package: it checks that the scorer is
one (:func:`scorer_tower`), takes the explained blocks (:func:`as_module_list`), runs the scorer once with forward
hooks that are removed even on error and that ignore other threads' forwards (:func:`hooked`, under the model's
lock of :mod:`captum_gradeclip.hooking`), checks that every hooked module ran exactly once
(:func:`~captum_gradeclip.hooking.check_runs`), and shapes its ``(N, K, L)`` scores over token positions as the
result (:func:`shape_token_maps`: ``(N, K, h, w)`` on the patch grid, ``(N, K, L)`` over text positions) without
synchronising with the device. :class:`TokenAttribution` holds these steps; each method adds only its own map.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from captum.attr._utils.attribution import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .adapters.base import TokenLayout, Tower
from .errors import LayerNotExecutedError, UnsupportedModelError
from .hooking import calling_thread_only, model_lock
from .targets import single_input

#: What an explainer accepts as its layers: one module, several, or None (the method's default).
LayerSpec = Union[nn.Module, Sequence[nn.Module], None]
#: A forward hook to register: (module, "pre" | "post", hook taking (module, args, kwargs[, output])).
Hook = Tuple[nn.Module, str, Callable]


def scorer_tower(forward_func: Any, method: str) -> Tower:
    """The tower of a captum_gradeclip scorer, or a TypeError that says what to pass."""
    tower = getattr(forward_func, "tower", None)
    if not isinstance(tower, Tower) or not callable(getattr(forward_func, "score", None)):
        raise TypeError(
            f"{method} needs a scorer built by captum_gradeclip (ImageTextSimilarity or TextImageSimilarity) as "
            f"forward_func, got {type(forward_func).__name__}; wrap your model, e.g. "
            "ImageTextSimilarity(model, tokens)")
    return tower


def as_module_list(layer: LayerSpec) -> Optional[List[nn.Module]]:
    """None, one module, or a sequence of modules, as a list (None stays None; an empty sequence is a ValueError)."""
    if layer is None:
        return None
    if isinstance(layer, nn.Module) and not isinstance(layer, (nn.ModuleList, nn.Sequential)):
        return [layer]
    out = list(layer)
    if not out:
        raise ValueError("layer must name at least one block or attention module")
    return out


def first_tensor_position(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[str, Any]:
    """Where the hidden states are among a block's arguments: ("arg", index) or ("kw", name)."""
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            return "arg", i
    for name, a in kwargs.items():
        if isinstance(a, Tensor):
            return "kw", name
    raise LayerNotExecutedError("the explained block received no tensor input")


def first_tensor(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    """The hidden states among a block's arguments (the first tensor, positional arguments first)."""
    where, key = first_tensor_position(args, kwargs)
    return args[key] if where == "arg" else kwargs[key]


@contextmanager
def hooked(hooks: Sequence[Hook]) -> Iterator[None]:
    """Register the given hooks for the duration of a ``with`` block; every hook is removed, even on error.

    Each hook sees only the forwards run by the registering thread (other threads' forwards through these
    modules are not this call's).
    """
    handles = []
    try:
        for module, kind, fn in hooks:
            fn = calling_thread_only(fn)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def run_hooked(forward_func: Callable, inputs: Tensor, extra: Tuple[Any, ...], hooks: Sequence[Hook]) -> Tensor:
    """Run the scorer once under ``no_grad`` with the given hooks; every hook is removed, even on error.

    Hooks that need a graph call ``torch.set_grad_enabled(True)`` themselves: the graph then starts at the
    first hooked layer, and the surrounding ``no_grad`` restores the caller's grad mode on exit.
    """
    with hooked(hooks), torch.no_grad():
        return forward_func(inputs, *extra)


def shape_token_maps(values: Tensor, layout: TokenLayout) -> Tensor:
    """Scores ``(N, K, L)`` over token positions as a result: zero outside the reported tokens, float32, and on
    the patch grid ``(N, K, h, w)`` for images (``(N, K, L)`` for text).

    The ``h * w`` reported positions are found in order without a boolean index (which would make the host wait
    for the device).
    """
    if layout.grid is None:
        return values.float() * layout.report_mask[:, None, :].to(values.device)
    h, w = layout.grid
    if values.shape[0] == 0:
        return values.new_zeros(0, values.shape[1], h, w, dtype=torch.float32)
    values = values.float() * layout.report_mask[:, None, :].to(values.device)
    keep = torch.argsort((~layout.report_mask[0]).to(torch.uint8), stable=True)[:h * w].to(values.device)
    return values[:, :, keep].reshape(values.shape[0], values.shape[1], h, w)


class TokenAttribution(LayerAttribution, GradientAttribution):
    """Base of the token-level explainers: a Captum layer attribution on a captum_gradeclip scorer.

    Subclasses set :attr:`attention_required` and :attr:`text_supported`, may override :meth:`_default_blocks`,
    and either implement :meth:`_token_map` (``(N, L)`` scores over token positions for one target per example;
    :meth:`attribute` then validates the inputs, holds the model's lock and shapes the result as
    ``(N, 1, h, w)`` or ``(N, L)``) or drive these steps themselves (GradECLIP, which explains many targets at
    once).

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer.
        layers (nn.Module or list of nn.Module, optional): blocks (or attention modules) of the scorer's tower.
            Default: :meth:`_default_blocks` (every block, unless the method says otherwise)
        device_ids (list of int, optional): kept for Captum's signature. Default: None
    """

    #: Whether the scorer's tower must have attention layers (the attention-reading baselines).
    attention_required: bool = True
    #: Whether text scorers are explained (else: images only).
    text_supported: bool = True

    def __init__(self, forward_func: Callable, layers: LayerSpec = None,
                 device_ids: Optional[List[int]] = None) -> None:
        tower = scorer_tower(forward_func, type(self).__name__)
        blocks = as_module_list(layers)
        if self.attention_required and not tower.has_attention:
            raise UnsupportedModelError(
                f"{type(self).__name__} reads attention layers; the {tower.side} tower of "
                f"{type(tower.model).__name__} has none (its last feature map is averaged into the embedding): use "
                "GradECLIP (Grad-CAM on that feature map, lambda = 1) or captum.attr.LayerGradCam on the scorer")
        if tower.side != "image" and not self.text_supported:
            raise ValueError(f"{type(self).__name__} explains images only: pass an ImageTextSimilarity scorer")
        if blocks is None:
            blocks = self._default_blocks(tower)
        LayerAttribution.__init__(self, forward_func, blocks if len(blocks) > 1 else blocks[0], device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.tower: Tower = tower
        self.blocks: List[nn.Module] = blocks

    def _default_blocks(self, tower: Tower) -> List[nn.Module]:
        """The explained blocks when none are given: every block of the tower."""
        return tower.blocks()

    @log_usage()
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType = None,
                  additional_forward_args: Any = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""The method's map of one target per example over the explained tokens.

        Args:
            inputs (Tensor or tuple of one Tensor): images ``(N, 3, H, W)`` or token ids ``(N, L)``.
            target (int, tuple, Tensor or list, optional): the scorer's column to explain (Captum semantics);
                None only for a one-column scorer. Class-agnostic methods (raw attention, rollout) ignore it and
                validate it only when given. Default: None
            additional_forward_args (Any, optional): extra scorer arguments (HF attention mask).

        Returns:
            *Tensor* or *tuple[Tensor]*: ``(N, 1, h, w)`` for images, ``(N, L)`` for text (zero outside words);
            non-negative.
        """
        return self._run(inputs, target, additional_forward_args)

    def _inputs(self, inputs: Union[Tensor, Tuple[Tensor, ...]], additional_forward_args: Any
                ) -> Tuple[Tensor, Tuple[Any, ...], bool]:
        """The input tensor, the extra scorer arguments as a tuple, and whether the input came as a 1-tuple."""
        x, is_tuple = single_input(inputs, type(self).__name__)
        return x, tuple(_format_additional_forward_args(additional_forward_args) or ()), is_tuple

    def _run(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType,
             additional_forward_args: Any) -> Union[Tensor, Tuple[Tensor, ...]]:
        """The template of a one-target call: validate, hold the model's lock, :meth:`_token_map`, shape."""
        x, extra, is_tuple = self._inputs(inputs, additional_forward_args)
        self.tower.validate(x, *extra)
        if x.shape[0] == 0:  # an empty batch: an empty result of the right shape
            layout = self.tower.layout(x, *extra)
            out = self._shape(torch.zeros(0, layout.report_mask.shape[1], device=x.device), layout)
            return (out,) if is_tuple else out
        # one call at a time per model: hooks fire for every forward through a module (see captum_gradeclip.hooking)
        with model_lock(self.tower.model), torch.inference_mode(False):
            layout = self.tower.layout(x, *extra)
            values = self._token_map(x, extra, layout, target)
        out = self._shape(values.detach(), layout)
        return (out,) if is_tuple else out

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        """The method itself: ``(N, L)`` scores over the explained tower's tokens (each baseline defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _token_map")  # pragma: no cover

    @staticmethod
    def _shape(values: Tensor, layout: TokenLayout) -> Tensor:
        """``(N, L)`` scores as ``(N, 1, h, w)`` (image) or ``(N, L)`` (text), see :func:`shape_token_maps`."""
        out = shape_token_maps(values[:, None], layout)
        return out if layout.grid is not None else out[:, 0]
