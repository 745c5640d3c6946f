"""The open_clip families of the coverage tests: one tiny (or shrunk zoo) model per image and text family.

Shared by tests/test_coverage_open_clip.py and tests/test_device_syncs.py.
"""

from __future__ import annotations

from typing import Dict, Optional

import open_clip
import torch
from torch import Tensor, nn

from fixtures import EMBED, build, native_image_size

_CACHE: Dict[str, nn.Module] = {}


def zoo(name: str) -> nn.Module:
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


def tiny_clip(cls=open_clip.CLIP, vision: Optional[dict] = None, text: Optional[dict] = None, **kw) -> nn.Module:
    torch.manual_seed(0)
    vision = {**dict(layers=2, width=64, head_width=32, patch_size=8, image_size=32), **(vision or {})}
    text = {**dict(context_length=16, vocab_size=100, width=EMBED, heads=2, layers=2), **(text or {})}
    return cls(embed_dim=EMBED, vision_cfg=vision, text_cfg=text, **kw).eval()


def clip_tokens(n: int = 2, length: int = 16, vocab: int = 100) -> Tensor:
    """[SOT, words, EOT, 0 ...] like open_clip's tokenizer."""
    ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        row = [vocab - 2] + list(range(10, 12 + i)) + [vocab - 1]
        ids[i, :len(row)] = torch.tensor(row)
    return ids


def images_for(model: nn.Module, n: int = 2, wide: bool = False) -> Tensor:
    h, w = native_image_size(model)
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, h, 2 * w if wide else w, generator=g)


IMAGE_FAMILIES = {
    # name: (builder, grid of a (H, 2W) input or None when only the native size is accepted)
    "vit-cls": (lambda: zoo("ViT-B-32"), (4, 8)),
    "vit-avg (CLIPA)": (lambda: tiny_clip(vision=dict(pool_type="avg", no_ln_pre=True, final_ln_after_pool=True)),
                        (4, 8)),
    "vit-custom-block": (lambda: tiny_clip(vision=dict(qk_norm=True, scale_heads=True, scale_attn_inner=True,
                                                       scale_attn=True, scale_fc=True, ls_init_value=0.5)), (4, 8)),
    "coca-attn-pool": (lambda: zoo("coca_ViT-B-32"), (4, 8)),
    "resnet-attnpool": (lambda: zoo("RN50"), (2, 4)),
    "timm-siglip-map": (lambda: zoo("ViT-B-16-SigLIP"), (4, 8)),
    "timm-vit-cls (MobileCLIP2-L)": (lambda: zoo("MobileCLIP2-L-14"), (4, 8)),
    "timm-vit-gap": (lambda: zoo("vit_medium_patch16_gap_256"), (4, 8)),
    "timm-eva02-rope": (lambda: zoo("EVA02-B-16"), (4, 8)),
    "timm-pe-rope-map": (lambda: zoo("PE-Core-T-16-384"), (4, 8)),
    "timm-relpos (native only)": (lambda: zoo("vit_relpos_medium_patch16_cls_224"), None),
    "timm-hybrid (MobileCLIP-B)": (lambda: zoo("MobileCLIP-B"), (4, 8)),
    # towers without a pooling attention: the last feature map through its global average pool, lambda = 1
    "timm-convnext (feature map)": (lambda: zoo("convnext_base"), (7, 14)),
    "timm-fastvit (MobileCLIP-S, feature map)": (lambda: zoo("MobileCLIP2-S0"), (8, 16)),
    "timm-swin (feature map, native only)": (lambda: zoo("swin_base_patch4_window7_224"), None),
}


TEXT_FAMILIES = {
    "clip-argmax-causal": lambda: zoo("ViT-B-32"),
    "eos-pooling (worldwide)": lambda: zoo("ViT-L-14-worldwide"),
    "last-bidirectional (CLIPA)": lambda: zoo("ViT-L-14-CLIPA"),
    "siglip-last (TextTransformer)": lambda: zoo("ViT-B-16-SigLIP"),
    "coca-cls-token": lambda: zoo("coca_ViT-B-32"),
    "first-pooling+pad-mask": lambda: pad_mask_model("first"),
    "hf-roberta-mean": lambda: zoo("roberta-ViT-B-32"),
    "hf-mt5-mean": lambda: zoo("mt5-base-ViT-B-32"),
    "hf-nllb-cls": lambda: zoo("nllb-clip-base"),
}


def pad_mask_model(pool_type: str) -> nn.Module:
    model = tiny_clip(open_clip.CustomTextCLIP, text=dict(no_causal_mask=True, pool_type=pool_type))
    # open_clip's CLIPTextCfg does not expose use_pad_mask; build the TextTransformer with it
    from open_clip.transformer import TextTransformer
    torch.manual_seed(0)
    model.text = TextTransformer(context_length=16, vocab_size=100, width=EMBED, heads=2, layers=2,
                                 output_dim=EMBED, no_causal_mask=True, use_pad_mask=True,
                                 pool_type=pool_type).eval()
    return model
