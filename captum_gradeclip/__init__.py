"""captum-gradeclip: Grad-ECLIP explanations for CLIP-style models as Captum attributions."""

from typing import TYPE_CHECKING, Any

from . import data, metrics, zoo
from .adapters import SUPPORTED_MODELS, image_tower, text_tower
from .baselines import (AttentionRollout, GradientWeightedAttention, LeGrad, MaskCLIPSimilarity, RawAttention,
                        TokenGradCAM, patch_feature_mask, pool_to_grid)
from .errors import LayerNotExecutedError, UnsupportedModelError
from .adapters.attention import register_attention_adapter
from .grad_eclip import GradECLIP
from .layers import default_layers, describe_layers
from .scorers import ImageTextSimilarity, TextImageSimilarity

if TYPE_CHECKING:  # pragma: no cover - typing only; at run time these come from __getattr__
    from . import viz
    from .viz import normalize_map, normalize_words

__version__ = "0.1.0"

__all__ = [
    "AttentionRollout",
    "GradECLIP",
    "GradientWeightedAttention",
    "LeGrad",
    "MaskCLIPSimilarity",
    "RawAttention",
    "SUPPORTED_MODELS",
    "TokenGradCAM",
    "default_layers",
    "describe_layers",
    "register_attention_adapter",
    "patch_feature_mask",
    "pool_to_grid",
    "ImageTextSimilarity",
    "LayerNotExecutedError",
    "TextImageSimilarity",
    "UnsupportedModelError",
    "image_tower",
    "metrics",
    "normalize_map",
    "normalize_words",
    "text_tower",
    "data",
    "viz",
    "zoo",
]


_FROM_VIZ = ("normalize_map", "normalize_words")


def __getattr__(name: str) -> Any:
    """``viz`` and its names exported here are imported on first use, so ``import captum_gradeclip`` stays light
    (no display code, no matplotlib)."""
    if name == "viz" or name in _FROM_VIZ:
        import importlib
        viz = importlib.import_module(".viz", __name__)
        return viz if name == "viz" else getattr(viz, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
