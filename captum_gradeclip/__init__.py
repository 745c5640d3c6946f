"""captum-gradeclip: Grad-ECLIP explanations for CLIP-style models as Captum attributions."""

from . import data, metrics, viz, zoo
from .adapters import SUPPORTED_MODELS, image_tower, text_tower
from .baselines import (AttentionRollout, GradientWeightedAttention, LeGrad, MaskCLIPSimilarity, RawAttention,
                        TokenGradCAM, patch_feature_mask, pool_to_grid)
from .errors import LayerNotExecutedError, UnsupportedModelError
from .adapters.attention import register_attention_adapter
from .grad_eclip import GradECLIP
from .layers import default_layers, describe_layers
from .scorers import ImageTextSimilarity, TextImageSimilarity
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
