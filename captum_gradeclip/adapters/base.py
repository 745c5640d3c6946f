"""Tower adapters: what Grad-ECLIP needs to know about one tower (image or text) of a CLIP-style model.

A :class:`Tower` knows how to encode its inputs into the joint embedding space, which transformer blocks it has,
which attention module of a block to explain, which token is the pooling query, over which tokens the
"loosened attention" is normalised, and how token positions map to the returned map (a patch grid for
images, token positions for text). Everything model-specific lives in the subclasses of this module's
siblings; the attribution core only talks to this interface.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .registry import attention_adapter, is_attention_module


@dataclass
class TokenLayout:
    """Token bookkeeping for one batch of inputs.

    Attributes:
        query: ``(N,)`` position of the pooling query token in each example.
        lam_mask: ``(N, L)`` positions over which the loosened attention is min-max normalised.
        report_mask: ``(N, L)`` positions that appear in the returned map (patch tokens, or words).
        allowed: ``(N, L, L)`` boolean attention mask of the tower (None: every token sees every token);
            used when explained blocks are re-run as a single head.
        grid: ``(h, w)`` patch grid on the image side, None on the text side.
        query_mask: ``(N, Lq)`` for towers pooled by averaging (no pooling token): every masked position is a
            query and the per-query maps are summed (the pooling weight is already in the gradient). When
            given, ``query`` is ignored.
        positions: ``(L_out,)`` key positions returned on the text side (None: all of them); lets a tower
            drop positions that are not input tokens, such as the class token CoCa appends to the text.
    """

    query: Tensor
    lam_mask: Tensor
    report_mask: Tensor
    allowed: Optional[Tensor] = None
    grid: Optional[Tuple[int, int]] = None
    query_mask: Optional[Tensor] = None
    positions: Optional[Tensor] = None


@dataclass
class RowTail:
    """The pooling query's path through the last blocks of a causal tower, one row at a time (see
    :meth:`Tower.row_tail`).

    Block ``j`` of the tail (``attentions[j]`` is its attention module) maps its input rows ``x`` ``(N, 1, C)`` at
    the query to its output rows as ``post(j, x, y)``, where ``y`` is the attention module's output row computed
    from ``pre(j, x)`` (the module's input rows; the query's own key and value come from them, every other key
    and value from the module's recorded inputs). ``head`` maps the last block's output row to the embedding.

    Attributes:
        attentions: the attention module of every block from the first explained one to the last, in order; their
            adapters implement :meth:`~captum_gradeclip.adapters.attention.AttentionAdapter.row_qkv`.
        block: the first block of the tail (its input row at the query is recorded).
        pre: ``pre(j, x) -> h``: the input ``(N, 1, C)`` of ``attentions[j]`` for the block's input rows ``x``.
        post: ``post(j, x, y) -> x'``: block ``j``'s output rows for its input rows ``x`` and the attention
            module's output rows ``y`` (as the adapter's ``output_tensor`` reads it).
        head: ``head(x) -> e``: the embedding ``(N, E)`` of the last block's output rows ``x`` ``(N, C)``.
    """

    attentions: List[nn.Module]
    block: nn.Module
    pre: Callable[[int, Tensor], Tensor]
    post: Callable[[int, Tensor, Tensor], Tensor]
    head: Callable[[Tensor], Tensor]


def tail_blocks(blocks: Sequence[nn.Module], attentions: Sequence[nn.Module], name: str
                ) -> Optional[List[nn.Module]]:
    """The blocks from the first one whose attention module (attribute ``name``) is one of ``attentions`` to the
    last block; None when some module of ``attentions`` is not the ``name`` attribute of a block."""
    wanted = {id(m) for m in attentions}
    owners = [j for j, b in enumerate(blocks) if id(getattr(b, name, None)) in wanted]
    if not owners or len(owners) != len(wanted):
        return None
    return list(blocks[min(owners):])


#: attribute names of token embeddings (open_clip, CLIP, SigLIP: token_embedding; BERT-like: word_embeddings; T5 and
#: decoder-style text models: embed_tokens / shared; others: tok_embeddings, wte)
_TOKEN_EMBEDDINGS = ("token_embedding", "word_embeddings", "embed_tokens", "shared", "tok_embeddings", "wte")


def _some(values: List[int], limit: int = 10) -> str:
    """A list of ints for a message, cut after ``limit``."""
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


class Tower(abc.ABC):
    """One tower of a CLIP-style model, as seen by Grad-ECLIP.

    Subclasses implement :meth:`encode`, :meth:`blocks`, :meth:`layout` and set :attr:`side` and
    :attr:`root` (the tower's top module: explained layers must live inside it).
    """

    side: str = "image"
    #: number of blocks explained by default (counted from the last); the text side uses the authors' 8.
    default_depth: int = 1
    #: False for towers without attention layers to read (the explained layer is a global average pool): the
    #: attention-based baselines do not apply to them.
    has_attention: bool = True

    def __init__(self, model: nn.Module, root: nn.Module) -> None:
        self.model = model
        self.root = root

    # -- encoding ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, inputs: Any, *extra: Any) -> Tensor:
        """Embeddings ``(N, E)`` (not normalised) of ``inputs``."""

    # -- layers -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def blocks(self) -> List[nn.Module]:
        """The transformer blocks of the tower, first to last."""

    def attention_of(self, block: nn.Module) -> nn.Module:
        """The self-attention module of ``block`` that Grad-ECLIP explains."""
        for name in ("attn", "self_attn", "attention"):
            sub = getattr(block, name, None)
            if isinstance(sub, nn.Module) and is_attention_module(sub):
                return sub
        found = [m for m in block.modules() if m is not block and is_attention_module(m)]
        if len(found) == 1:
            return found[0]
        raise UnsupportedModelError(
            f"cannot find the attention module of {type(block).__name__}: pass the attention module itself")

    def default_layers(self) -> List[nn.Module]:
        """Blocks explained when ``layer=None``: the last one (image) or the last 8 (text)."""
        blocks = self.blocks()
        return list(blocks[-min(self.default_depth, len(blocks)):])

    def resolve(self, layers: Sequence[nn.Module]) -> List[nn.Module]:
        """Attention modules for the given blocks or attention modules, checked to belong to this tower."""
        inside = {id(m) for m in self.root.modules()}
        out: List[nn.Module] = []
        for layer in layers:
            if not isinstance(layer, nn.Module):
                raise TypeError(f"layer must be an nn.Module or a list of them, got {type(layer).__name__}")
            if id(layer) not in inside:
                raise ValueError(
                    f"{type(layer).__name__} is not part of the {self.side} tower that this scorer explains "
                    f"({type(self.root).__name__}); pass a block or attention module of that tower")
            module = layer if is_attention_module(layer) else self.attention_of(layer)
            attention_adapter(module)  # raises UnsupportedModelError for unknown module types
            if any(module is m for m in out):
                raise ValueError(f"layer {type(layer).__name__} was given twice")
            out.append(module)
        return out

    # -- tokens -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def layout(self, inputs: Any, *extra: Any, single_head: bool = False) -> TokenLayout:
        """Token bookkeeping for ``inputs``."""

    def validate(self, inputs: Any, *extra: Any) -> None:
        """Raise a clear error for inputs of the wrong rank or dtype."""

    def check_values(self, inputs: Any) -> None:
        """Raise a ValueError for input values that no forward pass can explain: NaN or infinite pixels (image side;
        they would give all-NaN maps) and token ids outside the vocabulary (text side; torch would only say "index
        out of range in self"). The message names the examples (and the ids). One host-device sync per call."""
        if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.numel() == 0:
            return  # other shapes are validate()'s to refuse
        if inputs.is_floating_point():
            bad = ~torch.isfinite(inputs).flatten(1).all(dim=1)  # (N,)
            if bool(bad.any()):
                which = bad.nonzero().flatten().tolist()
                raise ValueError(f"{self.side} inputs {_some(which)} (of N={inputs.shape[0]}) contain NaN or infinite "
                                 "values; their maps would be all NaN. Check the preprocessing of those examples")
            return
        if inputs.dtype == torch.bool or self.side != "text":
            return
        vocab = self.vocab_size()
        outside = inputs < 0 if vocab is None else (inputs < 0) | (inputs >= vocab)
        if bool(outside.any()):
            ids = torch.unique(inputs[outside]).tolist()
            rows = outside.any(dim=1).nonzero().flatten().tolist()
            size = "" if vocab is None else f" of size {vocab} (ids 0..{vocab - 1})"
            raise ValueError(f"token ids {_some(ids)} in examples {_some(rows)} are outside the vocabulary{size} of "
                             f"{type(self.model).__name__}'s text tower; tokenise the texts with this model's "
                             "tokenizer")

    def vocab_size(self) -> Optional[int]:
        """Number of rows of the text tower's token embedding (None when there is none to find). Found once, by
        the names models give it, inside the tower first, then in the whole model."""
        if not hasattr(self, "_vocab_size"):
            found = None
            for scope in (self.root, self.model):
                found = next((m.num_embeddings for name, m in scope.named_modules()
                              if isinstance(m, nn.Embedding) and name.rsplit(".", 1)[-1] in _TOKEN_EMBEDDINGS), None)
                if found is not None:
                    break
            self._vocab_size = found
        return self._vocab_size

    def crop_length(self, inputs: Any, *extra: Any) -> Optional[int]:
        """For causal text towers pooled at a query token: the length after which nothing can reach any query
        (the last query position + 1), so Grad-ECLIP may explain ``inputs[:, :length]`` and pad the maps with
        zeros. None where cropping would change the result (bidirectional towers, appended class tokens)."""
        return None

    def pooled_tail(self, attention: nn.Module) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        """Optional fast path (single pooling query only): for the attention module of the last block, a function
        that maps (the block's input row at the query, the attention output row at the query) to the embedding.

        Towers that return a function let Grad-ECLIP differentiate only the query's path after the last block's
        attention: when that attention is the only explained layer, nothing else; with several explained layers,
        a graph up to the last block's attention input and the query's row from there. None means
        "differentiate the whole forward".
        """
        return None

    def attention_pooler(self) -> Optional[nn.Module]:
        """The attention pooler of the tower (a learned query attending to the last block's tokens: SigLIP's MAP
        head, CoCa's attentional pooler), or None for towers pooled at a token or by averaging."""
        return None

    def token_blocks(self) -> List[nn.Module]:
        """The blocks that map token sequences to token sequences: :meth:`blocks` without the attention pooler."""
        pooler = self.attention_pooler()
        return [b for b in self.blocks() if b is not pooler]

    def token_head(self) -> Optional[Callable[..., Tensor]]:
        """Optional: ``head(tokens, inputs, *extra) -> (N, E)``, the embedding of the output tokens ``(N, L, D)``
        (batch first) of any block of :meth:`token_blocks`, computed as the tower embeds its last block's output
        (final norm, pooling: class token, average or attention pooler, projection). The attention pooler is
        called as a module, so hooks on its attention see every call. None: not available (LeGrad needs it).
        """
        return None

    def row_tail(self, attentions: Sequence[nn.Module], single_head: bool = False) -> Optional[RowTail]:
        """Optional fast path for causal towers pooled at one query token (the EOS token of CLIP text): the query
        row's path from the first block of ``attentions`` (the explained attention modules) to the embedding.

        In a causal tower the rows before the query never see it and the rows after it are never seen by it, so
        the similarity's gradient at an explained layer's output flows through the query row only: Grad-ECLIP
        re-runs that row through the blocks of the returned :class:`RowTail` (attending to the recorded keys and
        values of the other rows) instead of differentiating the whole sequence. None (the default) means
        "differentiate the whole forward"; towers return None for anything they do not recognise
        (bidirectional attention, other pooling, unknown blocks or attention classes, ``single_head=True``).
        """
        return None


def interpolate_positions(pos: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                          num_prefix: int = 1) -> Tensor:
    """Bicubic interpolation of a ``(prefix + gh * gw, D)`` positional embedding to another patch grid.

    The prefix rows (class token) are kept as they are, as the Grad-ECLIP authors do. Returns a new tensor;
    the model's parameter is never written.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], d).to(pos.dtype)
    return torch.cat([prefix, grid], dim=0)


def check_images(images: Any, patch: Tuple[int, int], name: str = "images") -> None:
    """Images must be a float tensor (N, 3, H, W) whose sides are at least one patch."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got a tensor of shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (normalised pixels), got {images.dtype}")
    if images.shape[-2] < patch[0] or images.shape[-1] < patch[1]:
        raise ValueError(f"{name} of size {tuple(images.shape[-2:])} are smaller than one patch {patch}")


def check_tokens(tokens: Any, name: str = "token ids") -> None:
    """Token ids must be an integer tensor (N, L)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, L) of integers, got {type(tokens).__name__}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (N, L), got a tensor of shape {tuple(tokens.shape)}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")


def pair(x: Any) -> Tuple[int, int]:
    """``(a, b)`` from a pair or a single int (patch sizes, grids, image sizes of configs)."""
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


def grid_layout(n: int, grid: Tuple[int, int], device: torch.device, *, prefix: int = 1, query: int = 0,
                pooled_queries: Optional[Tensor] = None) -> TokenLayout:
    """Image layout: keys are ``prefix`` special tokens followed by the ``h x w`` patch grid (row-major).

    Args:
        n: batch size.
        grid: ``(h, w)`` patch grid.
        prefix: number of keys before the grid (class and register tokens, the mean token of a ResNet pool).
        query: position of the pooling query on the module's query axis (0: the class token of a ViT).
        pooled_queries: ``(Lq,)`` boolean mask of the queries that are averaged into the embedding (average
            pooling); replaces ``query``.

    Returns:
        TokenLayout: lam and the map over the patches, every key visible (``allowed`` is None).

    Examples::

        >>> grid_layout(2, (7, 7), torch.device("cpu")).report_mask.shape   # class token, then 49 patches
        torch.Size([2, 50])
    """
    length = prefix + grid[0] * grid[1]
    patches = torch.zeros(n, length, dtype=torch.bool, device=device)
    patches[:, prefix:] = True
    q = torch.full((n,), query, dtype=torch.long, device=device)
    query_mask = None
    if pooled_queries is not None:
        query_mask = pooled_queries.to(device)[None, :].expand(n, -1).clone()
    return TokenLayout(query=q, lam_mask=patches, report_mask=patches, allowed=None, grid=grid,
                       query_mask=query_mask)


#: values of ``text_layout(..., see_self=)``: which rows of ``allowed`` also see their own position
SEE_SELF = ("always", "if_empty")


def text_layout(tokens: Tensor, query: Tensor, words: Tensor, key_valid: Optional[Tensor], causal: bool,
                single_head: bool, length: Optional[int] = None, see_self: str = "if_empty") -> TokenLayout:
    """Layout of a text tower pooled at one query position, whose keys are ``length`` positions (the tokens,
    then any appended token such as CoCa's class token).

    Args:
        tokens: ``(N, L)`` ids.
        query: ``(N,)`` pooling position on the key axis.
        words: ``(N, L)`` word positions; reported where the query sees them (and is not the query itself).
        key_valid: ``(N, length)`` keys that are not masked out (padding); None: all.
        causal: whether a causal mask applies.
        single_head: the authors' normalisation of lam over every context position.
        length: number of key positions (default ``L``).
        see_self: which query rows of ``allowed`` (used when blocks are re-run as one head) also see their own
            position, so that no row is all masked (a NaN): ``"if_empty"`` only rows that see no key at all
            (open_clip, whose masks give padding rows nothing else), ``"always"`` every row (HuggingFace towers,
            whose padding rows also see themselves).

    Returns:
        TokenLayout: ``positions`` set when ``length`` exceeds ``L`` (the appended positions are not returned).

    Examples::

        >>> ids = torch.tensor([[49406, 320, 1929, 49407, 0]])        # start, two words, end, padding
        >>> words = words_from(ids > 0, first_word=1)
        >>> text_layout(ids, ids.argmax(-1), words, None, causal=True, single_head=False).report_mask.int().tolist()
        [[0, 1, 1, 0, 0]]
    """
    if see_self not in SEE_SELF:
        raise ValueError(f"see_self must be one of {SEE_SELF}, got {see_self!r}")
    n, l_in = tokens.shape
    length = l_in if length is None else length
    device = tokens.device
    pos = torch.arange(length, device=device)
    valid = torch.ones(n, length, dtype=torch.bool, device=device) if key_valid is None else key_valid
    allowed = valid[:, None, :].expand(n, length, length)
    if causal:
        allowed = allowed & (pos[None, :, None] >= pos[None, None, :])
    attends = allowed[torch.arange(n, device=device), query]
    eye = torch.eye(length, dtype=torch.bool, device=device)[None]
    allowed = allowed | (eye if see_self == "always" else eye & ~allowed.any(-1, keepdim=True))
    report = torch.zeros(n, length, dtype=torch.bool, device=device)
    report[:, :l_in] = words
    report &= attends & (pos[None, :] != query[:, None])
    lam_mask = torch.ones_like(attends) if single_head else attends
    positions = None if length == l_in else torch.arange(l_in, device=device)
    return TokenLayout(query=query, lam_mask=lam_mask, report_mask=report, allowed=allowed, positions=positions)


def words_from(valid: Tensor, first_word: int) -> Tensor:
    """``(N, L)`` word positions of ids with a padding mask ``valid``: not padding, from ``first_word`` on (1 after
    a start token)."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    return valid & (pos[None, :] >= first_word)


class ExplainsOneModuleMixin:
    """For towers in which one module only can be explained: an attention pooler (the only pooling query: CoCa,
    SigLIP and Perception Encoder MAP heads) or a global average pool (towers without a pooling attention).

    Layers of the tower outside :meth:`explained_module` are refused with :meth:`refusal`; layers outside the tower
    get the usual ValueError of :meth:`Tower.resolve`.
    """

    root: nn.Module

    @abc.abstractmethod
    def explained_module(self) -> Optional[nn.Module]:
        """The one module whose attention is explained (None: no restriction)."""

    @abc.abstractmethod
    def refusal(self, layer: nn.Module) -> str:
        """The message of the UnsupportedModelError for a ``layer`` of the tower outside :meth:`explained_module`."""

    def resolve(self, layers: Sequence[nn.Module]) -> List[nn.Module]:  # type: ignore[override]
        only = self.explained_module()
        if only is not None:
            allowed = {id(m) for m in only.modules()}
            inside = {id(m) for m in self.root.modules()}
            for layer in layers:
                if isinstance(layer, nn.Module) and id(layer) in inside and id(layer) not in allowed:
                    raise UnsupportedModelError(self.refusal(layer))
        return super().resolve(layers)  # type: ignore[misc]


class PoolerOnlyMixin(ExplainsOneModuleMixin):
    """For towers pooled by an attention pooler (``self.pooler``): only the pooler has a pooling query, so only it
    is explained."""

    pooler: Optional[nn.Module] = None
    family: str = ""

    def attention_pooler(self) -> Optional[nn.Module]:
        return self.pooler

    def explained_module(self) -> Optional[nn.Module]:
        return self.pooler

    def refusal(self, layer: nn.Module) -> str:
        return (f"{self.family} pools its image tokens with an attention pooler ({type(self.pooler).__name__}); "
                "Grad-ECLIP explains that pooler (its query attends to the patches), not the transformer blocks "
                f"before it: pass layer=None or the pooler, got {type(layer).__name__}")
