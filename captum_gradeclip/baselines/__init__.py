"""Baselines of the Grad-ECLIP papers as Captum attributions on the same scorers.

Token-level methods (``(N, 1, h, w)`` on the patch grid for image scorers, ``(N, L)`` over token positions for
text scorers, zero outside words):

- :class:`RawAttention`: the pooling query's attention row in one block, heads averaged.
- :class:`AttentionRollout`: Abnar & Zuidema (2020).
- :class:`GradientWeightedAttention`: Chefer et al. (2021), "GAME".
- :class:`TokenGradCAM`: Grad-CAM over tokens (channels and tokens handled correctly).
- :class:`MaskCLIPSimilarity`: MaskCLIP-style dense similarity (image side only).
- :class:`LeGrad`: Bousselham et al. (ICCV 2025), each layer's own similarity differentiated w.r.t. that layer's
  attention map (image side only; min-max normalised).

Pixel methods of Captum itself (``IntegratedGradients(scorer)``, ``Saliency``, ``GradientShap``,
``FeatureAblation``) run on the scorers directly; :func:`pool_to_grid` brings their ``(N, 3, H, W)`` output to the
patch grid and :func:`patch_feature_mask` gives patch-wise ablation masks.
"""

from .game import GradientWeightedAttention
from .legrad import LeGrad
from .maskclip import MaskCLIPSimilarity
from .pixel import patch_feature_mask, pool_to_grid
from .raw_attention import RawAttention
from .rollout import AttentionRollout
from .token_gradcam import TokenGradCAM

__all__ = [
    "AttentionRollout",
    "GradientWeightedAttention",
    "LeGrad",
    "MaskCLIPSimilarity",
    "RawAttention",
    "TokenGradCAM",
    "patch_feature_mask",
    "pool_to_grid",
]
