"""captum-gradeclip: Grad-ECLIP explanations for CLIP-style models as Captum attributions.

Every public name is imported on first use (PEP 562), so ``import captum_gradeclip`` is light: it imports neither
Captum (whose ``captum.attr`` imports matplotlib) nor torch, the adapters or the display code until a name is
used. ``from captum_gradeclip import GradECLIP`` imports what ``GradECLIP`` needs, Captum included.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:  # pragma: no cover - for type checkers and the documentation; at run time see __getattr__
    from . import data, metrics, viz, zoo
    from .adapters import SUPPORTED_MODELS, image_tower, text_tower
    from .adapters.attention import register_attention_adapter
    from .baselines import (AttentionRollout, GradientWeightedAttention, LeGrad, MaskCLIPSimilarity, RawAttention,
                            TokenGradCAM, patch_feature_mask, pool_to_grid)
    from .errors import LayerNotExecutedError, UnsupportedModelError
    from .grad_eclip import GradECLIP
    from .layers import default_layers, describe_layers
    from .scorers import ImageTextSimilarity, TextImageSimilarity
    from .viz import normalize_map, normalize_words

__version__ = "0.1.0"

#: public name -> the submodule that defines it (``""``: the name is itself a submodule)
_SOURCES: Dict[str, str] = {
    "AttentionRollout": "baselines",
    "GradECLIP": "grad_eclip",
    "GradientWeightedAttention": "baselines",
    "LeGrad": "baselines",
    "MaskCLIPSimilarity": "baselines",
    "RawAttention": "baselines",
    "SUPPORTED_MODELS": "adapters",
    "TokenGradCAM": "baselines",
    "default_layers": "layers",
    "describe_layers": "layers",
    "register_attention_adapter": "adapters.attention",
    "patch_feature_mask": "baselines",
    "pool_to_grid": "baselines",
    "ImageTextSimilarity": "scorers",
    "LayerNotExecutedError": "errors",
    "TextImageSimilarity": "scorers",
    "UnsupportedModelError": "errors",
    "image_tower": "adapters",
    "metrics": "",
    "normalize_map": "viz",
    "normalize_words": "viz",
    "text_tower": "adapters",
    "data": "",
    "viz": "",
    "zoo": "",
}

__all__ = list(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (and keep it in the module, so later uses cost nothing)."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(f".{source or name}", __name__)
    value = module if source == "" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_SOURCES))
