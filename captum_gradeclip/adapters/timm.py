"""timm image towers of open_clip (``TimmModel``): ViTs (class token, average or MAP pooling: SigLIP, SigLIP 2,
MobileCLIP-B/L), EVA / EVA02 / Perception Encoder (rotary embeddings), ViTamin, relative-position ViTs.

Towers without a pooling attention (ConvNeXt, FastViT / MobileCLIP-S, Swin) are explained at their last spatial
feature map through its global average pool, with lambda = 1 (Grad-CAM on the similarity; :class:`TimmFeatureMapTower`).

Images at the model's own size are encoded by the model itself (``model.visual(images)``). Other sizes, which timm
models accept only with ``dynamic_img_size`` (a flag we never flip), are encoded from the model's own modules:
patch embedding, the absolute positional embedding resampled into a new tensor
(``timm.layers.resample_abs_pos_embed``), rotary embeddings built for the new grid from the model's frequency
bands, then the model's blocks, norm and head.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import QKV, AttentionAdapter, split_heads
from .base import ExplainsOneModuleMixin, PoolerOnlyMixin, Tower, TokenLayout, check_images, grid_layout, pair
from .registry import attention_adapter


def _from_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


# ----------------------------------------------------------------------------------------------------------
# attention adapters
# ----------------------------------------------------------------------------------------------------------
class TimmAttentionAdapter(AttentionAdapter):
    """timm self-attention modules: ``Attention`` (ViT), ``EvaAttention`` and ``AttentionRope`` (EVA, EVA02,
    Perception Encoder), ``RelPosAttention``.

    q, k and v are recomputed from the module's input with its own projections (fused ``qkv`` or separate
    ``q_proj``/``k_proj``/``v_proj``, EVA's separate q/v biases), per-head ``q_norm``/``k_norm``, and the rotary
    embedding that the block passed to the module (``rope=``), applied after the prefix tokens exactly as the
    module does. Relative position biases (``RelPosAttention``) are added to the logits only, so they do not
    enter q and k: lam is computed without them. The output projection is ``proj(norm(o))``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        if getattr(module, "gate", None) is not None:
            raise UnsupportedModelError(
                f"timm {type(module).__name__} with a gated output (gated=True): the gate depends on each token, "
                "so the attention output cannot be projected on its own; not supported")
        self.read_heads()
        self.linear_projection = isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        if not _from_timm(module) or not isinstance(getattr(module, "proj", None), nn.Linear):
            return False
        if not hasattr(module, "num_heads") or not hasattr(module, "q_norm"):
            return False
        fused = isinstance(getattr(module, "qkv", None), nn.Linear)
        split = all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj"))
        return fused or split

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        x = args[0] if args else kwargs["x"]
        h = self.num_heads
        kv_heads = int(getattr(m, "num_kv_heads", h) or h)
        if getattr(m, "qkv", None) is not None:
            bias = m.qkv.bias
            if getattr(m, "q_bias", None) is not None:
                bias = torch.cat((m.q_bias, m.k_bias, m.v_bias))
            qkv = F.linear(x, m.qkv.weight, bias)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
        q, k, v = split_heads(q, h), split_heads(k, kv_heads), split_heads(v, kv_heads)
        q, k = m.q_norm(q), m.k_norm(k)
        rope = kwargs.get("rope", args[1] if len(args) > 1 and isinstance(args[1], Tensor) else None)
        if rope is not None and hasattr(m, "num_prefix_tokens"):
            from timm.layers import apply_rot_embed_cat
            npt = m.num_prefix_tokens
            half = bool(getattr(m, "rotate_half", False))
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        if kv_heads != h:
            k = k.repeat_interleave(h // kv_heads, dim=1)
            v = v.repeat_interleave(h // kv_heads, dim=1)
        return q, k, v

    def logit_bias(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """``RelPosAttention``'s relative position bias: its own ``rel_pos`` table, or the ``shared_rel_pos`` that
        the model passes to every block."""
        rel_pos = getattr(self.module, "rel_pos", None)
        if rel_pos is not None:
            return rel_pos.get_bias()
        shared = kwargs.get("shared_rel_pos")
        return shared if isinstance(shared, Tensor) else None

    def project(self, o: Tensor) -> Tensor:
        m = self.module
        return m.proj(getattr(m, "norm", nn.Identity())(o))


class TimmAttentionPoolLatentAdapter(AttentionAdapter):
    """timm ``AttentionPoolLatent`` (the MAP head of SigLIP and Perception Encoder): learned latent queries
    attend to the tokens.

    The query axis holds the latents; the key axis the tokens that enter the pool. The attention output is
    read at the pool's output projection ``proj`` (the pool's own output comes after an MLP and pooling).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.read_heads()

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return _from_timm(module) and hasattr(module, "latent") and isinstance(getattr(module, "kv", None), nn.Linear)

    @property
    def output_module(self) -> nn.Module:
        return self.module.proj

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        m = self.module
        x = args[0] if args else kwargs["x"]
        n = x.shape[0]
        if getattr(m, "pos_embed", None) is not None:
            x = x + m.pos_embed.unsqueeze(0).to(x.dtype)
        q = m.q(m.latent.expand(n, -1, -1))
        k, v = m.kv(x).chunk(2, dim=-1)
        h = self.num_heads
        q, k, v = split_heads(q, h), split_heads(k, h), split_heads(v, h)
        return m.q_norm(q), m.k_norm(k), v

    def project(self, o: Tensor) -> Tensor:
        proj = self.module.proj  # applied functionally: calling the hooked module would re-enter its hook
        if isinstance(proj, nn.Linear):
            return F.linear(o, proj.weight.to(o.dtype), None if proj.bias is None else proj.bias.to(o.dtype))
        return o


# ----------------------------------------------------------------------------------------------------------
# tower
# ----------------------------------------------------------------------------------------------------------
def _average_pool_format(module: nn.Module) -> Optional[str]:
    """``'NCHW'`` or ``'NHWC'`` for a timm ``SelectAdaptivePool2d`` that averages a feature map over every position
    into one vector; None for anything else (other pool types, several output cells, other modules)."""
    if type(module).__name__ != "SelectAdaptivePool2d" or not _from_timm(module):
        return None
    inner = getattr(module, "pool", None)
    if isinstance(inner, nn.AdaptiveAvgPool2d):
        return "NCHW" if pair(inner.output_size) == (1, 1) else None
    if type(inner).__name__ == "FastAdaptiveAvgPool":
        return {(2, 3): "NCHW", (1, 2): "NHWC"}.get(tuple(getattr(inner, "dim", ())))
    return None


class GlobalAveragePoolAdapter(AttentionAdapter):
    """timm's global average pool (``SelectAdaptivePool2d``, type ``avg``) of a tower's last spatial feature map
    ``A``, read as an attention whose single query is zero.

    Every logit is then zero, the softmax is uniform and the attention output is ``o = mean_i A_i``: the pool's
    own output. Keys and values are the positions of ``A`` (row-major, ``NCHW`` or ``NHWC`` as the pool reads
    them), the projection is the identity (``y = o``, the pooled vector). There is no query-key similarity, so
    :attr:`spatial_weight` is False (lambda = 1) and the Grad-ECLIP map is ``m_i = sum_c g_c A_ic`` with
    ``g = dS/d(pooled)``: Grad-CAM on the similarity (see ``docs/method.md``).
    """

    spatial_weight = False

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.format = _average_pool_format(module)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return _average_pool_format(module) is not None

    def tokens(self, x: Tensor) -> Tensor:
        """``(N, h*w, C)`` positions of a feature map, row-major."""
        if x.dim() != 4:
            raise ValueError(f"the global pool expected a 4-D feature map, got shape {tuple(x.shape)}")
        return x.flatten(1, 2) if self.format == "NHWC" else x.flatten(2).transpose(1, 2)

    def qkv(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> QKV:
        t = self.tokens(args[0] if args else kwargs["x"])[:, None]  # (N, 1, L, C)
        return t.new_zeros(t.shape[0], 1, 1, t.shape[-1]), t, t

    def project(self, o: Tensor) -> Tensor:
        return o

    def output_tensor(self, output: Any) -> Tensor:
        return output.reshape(output.shape[0], 1, -1)  # (N, C, 1, 1), (N, 1, 1, C) or (N, C) -> (N, 1, C)

    def replace_output(self, output: Any, y: Tensor) -> Any:
        return y.reshape(output.shape)


def _feature_pool(trunk: nn.Module) -> Optional[nn.Module]:
    """The global average pool that turns the trunk's last feature map into a vector (in its head, or the trunk's
    own ``global_pool`` module), or None."""
    for owner in (getattr(trunk, "head", None), trunk):
        pool = getattr(owner, "global_pool", None)
        if isinstance(pool, nn.Module) and _average_pool_format(pool) is not None:
            return pool
    return None


def timm_image_tower(model: nn.Module, visual: Optional[nn.Module] = None) -> Tower:
    """The tower of an open_clip ``TimmModel``, or UnsupportedModelError naming the trunk.

    Vision transformers with a pooling token or attention pool get :class:`TimmVisionTower`; trunks that average
    their last spatial feature map (ConvNeXt, FastViT / MobileCLIP-S, Swin) get :class:`TimmFeatureMapTower`.
    """
    visual = model.visual if visual is None else visual
    trunk = getattr(visual, "trunk", None)
    name = type(trunk).__name__
    head = getattr(visual, "head", None)
    if head is not None and hasattr(head, "pool"):
        raise UnsupportedModelError(
            f"open_clip TimmModel (timm.{name}) with open_clip's {type(head.pool).__name__} head "
            "(timm_pool='abs_attn'/'rot_attn') is not supported")
    if hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed") and isinstance(getattr(trunk, "global_pool", None),
                                                                                   str):
        return TimmVisionTower(model, visual)
    if _feature_pool(trunk) is not None and hasattr(trunk, "feature_info"):
        return TimmFeatureMapTower(model, visual)
    raise UnsupportedModelError(
        f"cannot explain the image tower of {type(model).__name__}: timm.{name} is neither a vision transformer with a "
        "pooling token or attention pool nor a network that averages its last feature map; supported timm trunks: "
        "VisionTransformer (class-token, average or MAP pooling), Eva (EVA, EVA02, Perception Encoder), "
        "VisionTransformerRelPos, ViTamin, and trunks ending in a global average pool (ConvNeXt, FastViT, Swin)")


class TimmFeatureMapTower(ExplainsOneModuleMixin, Tower):
    """An open_clip ``TimmModel`` whose trunk has no pooling attention and averages its last spatial feature map
    into the embedding (ConvNeXt, FastViT / MobileCLIP-S, Swin).

    The explained layer is that global average pool (its input is the last feature map ``A``, its output the pooled
    vector), read by :class:`GlobalAveragePoolAdapter` as an attention with a zero query: Grad-ECLIP's channel
    weights ``g = dS/d(pooled)`` applied to ``A`` with lambda = 1, i.e. Grad-CAM on the similarity. The map comes
    on the feature map's grid ``(H / r, W / r)`` (``r``: the trunk's total reduction, 32 or 64); image sides must
    be multiples of ``r``. Images are encoded by the model itself; trunks whose patch embedding is strict about
    the image size (Swin) accept only their own size.
    """

    side = "image"
    has_attention = False

    def __init__(self, model: nn.Module, visual: nn.Module) -> None:
        super().__init__(model, visual)
        trunk = visual.trunk
        self.visual, self.trunk = visual, trunk
        self.family = f"open_clip TimmModel (timm.{type(trunk).__name__})"
        self.pool = _feature_pool(trunk)
        self.patch = pair(trunk.feature_info[-1]["reduction"])
        size = getattr(visual, "image_size", None)
        self.native = pair(size) if size is not None else None
        pe = getattr(trunk, "patch_embed", None)
        self.resize_problem = None
        if getattr(pe, "strict_img_size", False) and not getattr(trunk, "dynamic_img_size", False):
            self.resize_problem = f"timm.{type(trunk).__name__} encodes a fixed grid (strict patch embedding)"

    def blocks(self) -> List[nn.Module]:
        return [self.pool]

    def attention_of(self, block: nn.Module) -> nn.Module:
        if block is self.pool:
            return block
        raise UnsupportedModelError(self.refusal(block))

    def explained_module(self) -> Optional[nn.Module]:
        return self.pool

    def refusal(self, layer: nn.Module) -> str:
        return (f"{self.family} has no pooling attention: Grad-ECLIP explains its last feature map through the "
                f"global average pool ({type(self.pool).__name__}, lambda = 1), not {type(layer).__name__}; pass "
                "layer=None. For Grad-CAM on other layers use captum.attr.LayerGradCam on the same scorer")

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch)
        size = tuple(inputs.shape[-2:])
        if size == self.native:
            return
        if self.resize_problem is not None:
            raise ValueError(f"{self.family} accepts only its own image size {self.native}, got {size}: "
                             f"{self.resize_problem}")
        if size[0] % self.patch[0] or size[1] % self.patch[1]:
            raise ValueError(f"{self.family}: image sides must be multiples of the trunk's reduction {self.patch} (the "
                             f"last feature map is (H / {self.patch[0]}, W / {self.patch[1]})), got {size}")

    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        return self.visual(inputs)

    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = (inputs.shape[-2] // self.patch[0], inputs.shape[-1] // self.patch[1])
        return grid_layout(inputs.shape[0], grid, inputs.device, prefix=0)


class TimmVisionTower(PoolerOnlyMixin, Tower):
    """An open_clip ``TimmModel`` whose trunk is a timm vision transformer.

    - MAP pooling (``attn_pool``, SigLIP, Perception Encoder): the pool's latent query attends to the tokens; the
      pool is explained by default (and is the only layer that can be);
    - class-token pooling (EVA, MobileCLIP-B/L, relpos ViTs): the class token is the query of the last block;
    - average pooling (ViTamin, ``gap`` ViTs): every patch token is a query and the per-query maps are summed.

    Register tokens are excluded from the map. Other input sizes: see the module docstring.
    """

    side = "image"

    def __init__(self, model: nn.Module, visual: nn.Module) -> None:
        super().__init__(model, visual)
        trunk = visual.trunk
        self.visual, self.trunk = visual, trunk
        self.family = f"open_clip TimmModel (timm.{type(trunk).__name__})"
        self.prefix = int(getattr(trunk, "num_prefix_tokens", 0))
        self.pooler = getattr(trunk, "attn_pool", None)
        self.pool_type = trunk.global_pool
        include_prefix = bool(getattr(trunk, "pool_include_prefix", False))
        if self.pooler is not None:
            if not hasattr(self.pooler, "latent"):
                raise UnsupportedModelError(f"{self.family}: attention pool {type(self.pooler).__name__} is not "
                                            "supported; supported: AttentionPoolLatent (MAP)")
            # timm's VisionTransformer drops the prefix tokens before the pool (unless pool_include_prefix);
            # Eva pools every token
            self.key_prefix = self.prefix if (include_prefix or not hasattr(trunk, "pool_include_prefix")) else 0
            if self.pooler.pool not in ("token", "avg"):
                raise UnsupportedModelError(f"{self.family}: MAP pool type {self.pooler.pool!r} is not supported")
        elif self.pool_type == "token":
            if self.prefix < 1 or getattr(trunk, "cls_token", None) is None:
                raise UnsupportedModelError(f"{self.family}: token pooling without a class token")
        elif self.pool_type == "avg":
            if include_prefix:
                raise UnsupportedModelError(f"{self.family}: average pooling that includes the prefix tokens is "
                                            "not supported")
        else:
            raise UnsupportedModelError(
                f"{self.family} with global_pool={self.pool_type!r} has no pooling query; supported: 'token', "
                "'avg', 'map'")
        for block in self.blocks():
            attention_adapter(self.attention_of(block))  # fail now on unknown attention modules
        self.patch = self._patch()
        self.native = pair(trunk.patch_embed.img_size) if trunk.patch_embed.img_size is not None else None
        self.resize_problem = self._resize_problem()

    # -- layers -----------------------------------------------------------------------------------------
    def blocks(self) -> List[nn.Module]:
        blocks = list(self.trunk.blocks)
        return blocks + [self.pooler] if self.pooler is not None else blocks

    def attention_of(self, block: nn.Module) -> nn.Module:
        if self.pooler is not None and block is self.pooler:
            return block
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.Module):
            return attn
        return super().attention_of(block)

    # -- sizes ------------------------------------------------------------------------------------------
    def _patch(self) -> Tuple[int, int]:
        pe = self.trunk.patch_embed
        if hasattr(pe, "feat_ratio"):
            try:
                return pair(pe.feat_ratio(as_scalar=False))
            except TypeError:  # older timm: feat_ratio() takes no argument; patch_size is the same thing there
                return pair(pe.patch_size)
        return pair(pe.patch_size)

    def _resize_problem(self) -> Optional[str]:
        """Why other input sizes cannot be encoded (None: they can)."""
        t = self.trunk
        if getattr(t, "dynamic_img_size", False):
            return None
        if type(t).__name__ not in ("VisionTransformer", "Eva"):
            return f"timm.{type(t).__name__} encodes a fixed grid (relative position tables)"
        if getattr(t, "rope_mixed", False):
            return "mixed (learned) rotary embeddings are built for the model's grid"
        if getattr(self.pooler, "pos_embed", None) is not None:
            return "the attention pool has a positional embedding of fixed size"
        rope = getattr(t, "rope", None)
        if rope is not None:
            grid = tuple(t.patch_embed.grid_size)
            try:
                rebuilt = self._rope_for(grid)
                if rebuilt is None or not torch.allclose(rebuilt.float(), rope.get_embed().float(), atol=1e-5):
                    return "its rotary embedding cannot be rebuilt for another grid"
            except Exception:  # noqa: BLE001 - any failure means: native size only
                return "its rotary embedding cannot be rebuilt for another grid"
        return None

    def _rope_for(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        rope = self.trunk.rope
        build = getattr(rope, "_build_embed_cat", None)
        bands = getattr(rope, "bands", None)
        if build is None or bands is None:
            return None
        return build(list(grid), bands)

    def _is_native(self, images: Tensor) -> bool:
        return getattr(self.trunk, "dynamic_img_size", False) or tuple(images.shape[-2:]) == self.native

    def validate(self, inputs: Any, *extra: Any) -> None:
        check_images(inputs, self.patch)
        if self._is_native(inputs):
            return
        if self.resize_problem is not None:
            raise ValueError(f"{self.family} accepts only its own image size {self.native}, got "
                             f"{tuple(inputs.shape[-2:])}: {self.resize_problem}")
        if type(self.trunk.patch_embed).__name__ != "PatchEmbed" and (
                inputs.shape[-2] % self.patch[0] or inputs.shape[-1] % self.patch[1]):
            raise ValueError(f"{self.family}: image sides must be multiples of the stem's reduction {self.patch}, "
                             f"got {tuple(inputs.shape[-2:])}")

    def grid_of(self, images: Tensor) -> Tuple[int, int]:
        if self._is_native(images) and not getattr(self.trunk, "dynamic_img_size", False):
            return pair(self.trunk.patch_embed.grid_size)
        return images.shape[-2] // self.patch[0], images.shape[-1] // self.patch[1]

    # -- encoding ---------------------------------------------------------------------------------------
    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        if self._is_native(inputs):
            return self.visual(inputs)
        t = self.trunk
        x, rope = self._tokens(inputs)
        x = t.norm_pre(x)
        if rope is None and not hasattr(t, "rope"):
            x = t.blocks(x)
        else:
            for blk in t.blocks:
                x = blk(x, rope=rope)
        return self.embed_tokens(x)

    def embed_tokens(self, tokens: Tensor, *unused: Any) -> Tensor:
        """The embedding of the output tokens of any block: the trunk's final norm and head, then open_clip's."""
        t = self.trunk
        return self.visual.head(t.forward_head(t.norm(tokens)))

    def token_head(self) -> Optional[Callable[..., Tensor]]:
        return self.embed_tokens

    def _tokens(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Tokens entering ``norm_pre`` and the rotary embedding for the image's grid (other sizes)."""
        from timm.layers import resample_abs_pos_embed
        t = self.trunk
        pe = t.patch_embed
        if type(pe).__name__ == "PatchEmbed" and getattr(pe, "strict_img_size", False):
            x = pe.proj(images)
            grid = (x.shape[-2], x.shape[-1])
            x = pe.norm(x.flatten(2).transpose(1, 2))
        else:
            x = pe(images)
            x = x[0] if isinstance(x, tuple) else x
            grid = self.grid_of(images)
        if x.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{self.family}: expected a {grid} token grid for images of size "
                             f"{tuple(images.shape[-2:])}, got {x.shape[1]} tokens")
        prefix = []
        if getattr(t, "cls_token", None) is not None:
            prefix.append(t.cls_token.expand(x.shape[0], -1, -1))
        if getattr(t, "reg_token", None) is not None:
            prefix.append(t.reg_token.expand(x.shape[0], -1, -1))
        pos = None
        if getattr(t, "pos_embed", None) is not None:
            pos = resample_abs_pos_embed(t.pos_embed, new_size=list(grid), old_size=list(pe.grid_size),
                                         num_prefix_tokens=0 if t.no_embed_class else self.prefix)
        if t.no_embed_class:
            x = x + pos if pos is not None else x
            x = torch.cat(prefix + [x], dim=1) if prefix else x
        else:
            x = torch.cat(prefix + [x], dim=1) if prefix else x
            x = x + pos if pos is not None else x
        x = t.pos_drop(x)
        rope = self._rope_for(grid) if getattr(t, "rope", None) is not None else None
        return x, rope

    # -- tokens -----------------------------------------------------------------------------------------
    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        grid = self.grid_of(inputs)
        n, device = inputs.shape[0], inputs.device
        if self.pooler is not None:
            latents = int(self.pooler.latent.shape[1])
            pooled = torch.ones(latents, dtype=torch.bool) if self.pooler.pool == "avg" else None
            return grid_layout(n, grid, device, prefix=self.key_prefix, pooled_queries=pooled)
        if self.pool_type == "avg":
            pooled = torch.arange(self.prefix + grid[0] * grid[1]) >= self.prefix
            return grid_layout(n, grid, device, prefix=self.prefix, pooled_queries=pooled)
        return grid_layout(n, grid, device, prefix=self.prefix)
