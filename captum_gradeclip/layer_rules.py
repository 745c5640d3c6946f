"""How the maps of several explained layers are combined (``GradECLIP(..., layer_rule=...)``)."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

#: ``"sum_then_relu"``: ReLU(sum over layers of m_l); ``"relu_then_sum"``: sum over layers of ReLU(m_l).
LAYER_RULES = ("sum_then_relu", "relu_then_sum")
#: The paper's rule on each side, used when ``layer_rule`` is None.
PAPER_LAYER_RULES = {"image": "relu_then_sum", "text": "sum_then_relu"}


def combine_layer_maps(per_layer: Sequence[Tensor], layer_rule: str) -> Tensor:
    r"""Combine the signed maps :math:`m_l` of the explained layers into one non-negative map.

    Args:
        per_layer (sequence of Tensor): one signed map per explained layer, all of the same shape.
        layer_rule (str): ``"sum_then_relu"``: :math:`\max(0, \sum_l m_l)` (the paper's text rule: layers whose
            contributions have opposite signs cancel, and the map can be zero everywhere);
            ``"relu_then_sum"``: :math:`\sum_l \max(0, m_l)` (the paper's image rule: every layer's positive
            part counts). The two agree when one layer is explained.

    Returns:
        Tensor: the combined map, of the shape of one layer's map, non-negative.

    Examples::

        >>> combine_layer_maps([torch.tensor([1., -2.]), torch.tensor([-1., 3.])], "sum_then_relu")
        tensor([0., 1.])
        >>> combine_layer_maps([torch.tensor([1., -2.]), torch.tensor([-1., 3.])], "relu_then_sum")
        tensor([1., 3.])
    """
    if not per_layer:
        raise ValueError("combine_layer_maps needs the map of at least one layer")
    if layer_rule == "relu_then_sum":
        return sum(F.relu(m) for m in per_layer)
    if layer_rule == "sum_then_relu":
        return F.relu(sum(per_layer))
    raise ValueError(f"layer_rule must be one of {LAYER_RULES}, got {layer_rule!r}")
