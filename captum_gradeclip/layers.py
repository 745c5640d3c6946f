"""Which layers Grad-ECLIP explains, by name.

:func:`default_layers` gives the blocks explained when ``GradECLIP(scorer, layer=None)``; :func:`describe_layers`
names the layers of a scorer's default or of a :class:`~captum_gradeclip.GradECLIP` as dotted module paths
relative to the model (``visual.transformer.resblocks.11``, ``visual.trunk.attn_pool``,
``text.transformer.resblocks.7``), the names ``model.get_submodule`` accepts.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Union

from torch import nn

from .adapters.base import Tower


def _tower(obj: Any) -> Tower:
    tower = getattr(obj, "tower", None)
    if not isinstance(tower, Tower):
        raise TypeError("expected a captum_gradeclip scorer (ImageTextSimilarity, TextImageSimilarity) or a "
                        f"GradECLIP, got {type(obj).__name__}")
    return tower


def default_layers(scorer: Any) -> List[nn.Module]:
    """The layers explained by default: the last block (image side; the pooling attention of towers pooled by
    attention: CoCa, SigLIP, ResNet CLIPs; the global average pool of the last feature map of towers without a
    pooling attention: ConvNeXt, FastViT, Swin, explained with lambda = 1) or the last 8 blocks (text side).

    Args:
        scorer (ImageTextSimilarity or TextImageSimilarity): the scorer.

    Returns:
        list of nn.Module: modules of the scorer's model, first to last.

    Examples::

        >>> [type(m).__name__ for m in default_layers(ImageTextSimilarity(model, tokens))]
        ['ResidualAttentionBlock']
    """
    return list(_tower(scorer).default_layers())


def _layers_of(obj: Any) -> Sequence[nn.Module]:
    if hasattr(obj, "attention_modules") and hasattr(obj, "layer"):  # a GradECLIP
        layer = obj.layer
        return list(layer) if isinstance(layer, (list, tuple)) else [layer]
    return default_layers(obj)


def describe_layers(obj: Union[Any, nn.Module]) -> List[str]:
    """Dotted names, relative to the model, of the layers a scorer explains by default or a GradECLIP explains.

    Args:
        obj (scorer or GradECLIP): an ``ImageTextSimilarity`` / ``TextImageSimilarity`` (its default layers) or a
            ``GradECLIP`` (the layers it was built with).

    Returns:
        list of str: one name per layer, e.g. ``['visual.transformer.resblocks.11']``. For image towers without a
        pooling attention (ConvNeXt, FastViT, Swin) the name is that of the global average pool of the last
        feature map, ``['visual.trunk.head.global_pool']``: its input is explained with Grad-ECLIP's channel
        weights and lambda = 1 (Grad-CAM on the similarity; see ``docs/method.md``).

    Examples::

        >>> describe_layers(ImageTextSimilarity(model, tokens))
        ['visual.transformer.resblocks.11']
        >>> describe_layers(GradECLIP(TextImageSimilarity(model, images)))[-1]
        'transformer.resblocks.11'
    """
    tower = _tower(obj)
    names = {id(m): name for name, m in tower.model.named_modules()}
    out = []
    for layer in _layers_of(obj):
        name = names.get(id(layer))
        if name is None:
            raise ValueError(f"{type(layer).__name__} is not a module of {type(tower.model).__name__}")
        out.append(name)
    return out


__all__ = ["default_layers", "describe_layers"]
