"""Grad-CAM over transformer tokens, with tokens and channels where they belong."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from captum._utils.typing import TargetType
from torch import Tensor, nn

from ..adapters.attention import is_attention_module, attention_adapter
from ..adapters.base import TokenLayout, Tower
from ..hooking import check_runs
from ..token_attribution import TokenAttribution, first_tensor_position, run_hooked
from ._common import batch_first_of, probe_gradients


class TokenGradCAM(TokenAttribution):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391) on a transformer's tokens.

    Captum's ``LayerGradCam`` treats dimension 1 as channels, which for a ``(N, L, D)`` token tensor averages
    over the width and sums over the tokens (captum-notes §2). Here the activations :math:`a_{ic}` are the
    tokens ``(N, L, D)`` of a block, and

    .. math::

        w_c = \frac{1}{|E|}\sum_{i\in E} \frac{\partial S}{\partial a_{ic}},\qquad
        m_i = \operatorname{ReLU}\Big(\sum_c w_c\, a_{ic}\Big)\quad (i \in E)

    with :math:`E` the explained tokens (patches, or the words of a caption).

    By default the activations are the **input of the last block** (the output of the one before): in a
    class-token (or EOS-token) pooled tower the last block's outputs at the other tokens never reach the
    embedding, so their gradient is zero. This is also the Grad-ECLIP authors' choice; they average the
    gradient over every token, class token included, where this class averages over the explained tokens.

    Args:
        forward_func (ImageTextSimilarity or TextImageSimilarity): the scorer.
        layer (nn.Module, optional): a block of the scorer's tower (or an attention module, whose output
            ``y`` is then used). Default: the last block, with ``attribute_to_layer_input=True``.
        device_ids (list of int, optional): kept for Captum's signature. Default: None
        attribute_to_layer_input (bool, optional): use the block's input tokens instead of its output.
            Default: True when ``layer`` is None, else False. The output of the last block (or of its attention
            module) gives all-zero maps in towers pooled at one token, and a UserWarning says so.

    Examples::

        >>> heat = TokenGradCAM(scorer).attribute(images, target=0)    # (N, 1, h, w)
    """

    def __init__(self, forward_func: Callable, layer: Optional[nn.Module] = None,
                 device_ids: Optional[List[int]] = None, attribute_to_layer_input: Optional[bool] = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        if len(self.blocks) != 1:
            raise ValueError("TokenGradCAM explains one layer")
        module = self.blocks[0]
        if is_attention_module(module):
            self.tower.resolve([module])  # checks that it belongs to the tower
            self._adapter = attention_adapter(module)
        else:
            if not any(module is b for b in self.tower.blocks()):
                raise ValueError(f"{type(module).__name__} is not a block of the {self.tower.side} tower; pass "
                                 "one of its transformer blocks (or an attention module)")
            self._adapter = None
        self.module = module
        self.attribute_to_layer_input = (layer is None) if attribute_to_layer_input is None \
            else bool(attribute_to_layer_input)
        self._batch_first = True if self._adapter is not None else batch_first_of(self.tower, module)
        last = self.tower.blocks()[-1]
        if not self.attribute_to_layer_input and any(module is m for m in last.modules()):
            warnings.warn(
                f"TokenGradCAM on the output of the last block's {type(module).__name__}: in a tower pooled at one "
                "token (the class token of a ViT, the EOS token of CLIP text) only that token's output reaches the "
                "similarity, so the gradient at every other token is zero and the maps are all zero; pass "
                "attribute_to_layer_input=True (the block's input tokens, the default when layer is None)",
                UserWarning, stacklevel=2)

    def _default_blocks(self, tower: Tower) -> List[nn.Module]:
        return tower.blocks()[-1:]  # the last block (its input tokens)

    def _tokens(self, x: Tensor) -> Tensor:
        return x if self._batch_first else x.transpose(0, 1)

    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        seen: Dict[str, Any] = {"runs": 0}

        def probed(x: Tensor) -> Tensor:
            torch.set_grad_enabled(True)  # restored when run_hooked's no_grad() exits
            tokens = self._tokens(x)
            probe = torch.zeros_like(tokens, requires_grad=True)
            seen["act"], seen["probe"], seen["runs"] = tokens.detach(), probe, seen["runs"] + 1
            return self._tokens(tokens + probe)  # back to the module's own layout

        def pre_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
            where, key = first_tensor_position(args, kwargs)
            if where == "arg":
                args = args[:key] + (probed(args[key]),) + args[key + 1:]
            else:
                kwargs = dict(kwargs, **{key: probed(kwargs[key])})
            return args, kwargs

        def post_hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
            if self._adapter is not None:
                return self._adapter.replace_output(output, probed(self._adapter.output_tensor(output)))
            if isinstance(output, tuple):
                return (probed(output[0]),) + tuple(output[1:])
            return probed(output)

        hook = (self.module, "pre", pre_hook) if self.attribute_to_layer_input else (self.module, "post", post_hook)
        scores = run_hooked(self.forward_func, inputs, extra, [hook])
        check_runs([self.module], [seen["runs"]])
        (grad,) = probe_gradients(scores, target, [seen["probe"]])
        act = seen["act"].float()
        explained = layout.report_mask.to(act.device).float()  # (N, L)
        weights = torch.einsum("nl,nlc->nc", explained, grad) / explained.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.relu(torch.einsum("nc,nlc->nl", weights, act))
