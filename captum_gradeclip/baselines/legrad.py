"""LeGrad (Bousselham et al.): the sensitivity of each layer's own pooled feature to that layer's attention map."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor, nn

from ..adapters.attention import attention_adapter
from ..adapters.base import TokenLayout, Tower
from ..errors import UnsupportedModelError
from ..hooking import check_runs
from ..token_attribution import Hook, LayerSpec, TokenAttribution, as_module_list, hooked, run_hooked, scorer_tower
from ._common import AttentionRecord, batch_first_of, probe_attention, selected_scores, target_columns

FEATURES = ("pooled", "mean")


class LeGrad(TokenAttribution):
    r"""LeGrad: gradients of every explained layer's own similarity w.r.t. that layer's attention map.

    Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, "LeGrad: An Explainability Method for Vision Transformers
    via Feature Formation Sensitivity" (ICCV 2025, https://arxiv.org/abs/2404.03214). For each explained block
    :math:`l` with output tokens :math:`Z^l`, the tower's own head (final norm, pooling, projection) gives a
    feature :math:`f^l = \operatorname{head}(Z^l)` and a similarity :math:`s^l = \cos(f^l, t)` with the target
    text (the scorer's similarity). With :math:`A^l` the attention probabilities ``(H, Lq, Lk)`` that form
    :math:`f^l`:

    .. math::

        E^l = \frac{1}{H\,L_q}\sum_{h}\sum_{q} \big(\nabla_{A^l} s^l\big)^+_{h, q, :},\qquad
        m = \operatorname{minmax}\Big(\frac{1}{|\mathcal L|}\sum_{l\in\mathcal L} E^l\Big)

    over the patch columns, min-max normalised per image (a map that is constant before normalisation is all
    zeros). Only :math:`s^l` is differentiated for layer :math:`l` (the later layers' features do not enter
    :math:`E^l`); one backward pass gives every layer's gradient.

    Which attention map :math:`A^l` is, per tower:

    - towers pooled at a class token or by averaging (CLIP ViTs, open_clip and HuggingFace): block :math:`l`'s own
      self-attention (every query row, every head); :math:`f^l` is the class token of :math:`Z^l` (or the
      average) through the final norm and the projection. With the class token, only its row has a gradient, so
      the mean over rows is that row scaled. ``feature="mean"`` instead pools :math:`Z^l` by the mean of all its
      tokens (class token included) before the final norm, as the ``legrad-torch`` package does for CLIP ViTs;
      every query row then has a gradient.
    - towers pooled by an attention pooler (SigLIP's MAP head, CoCa's attentional pooler; open_clip, timm and
      HuggingFace): the pooler applied to :math:`Z^l` forms :math:`f^l`, and :math:`A^l` is the pooler's attention
      (its learned queries over the tokens) in that call, as in the authors' package; the blocks' own
      self-attention does not form the feature. The ``legrad-torch`` package also subtracts the map of an "empty"
      prompt for SigLIP ("correction"); that heuristic is not part of this class.
    - towers without transformer blocks (ResNet CLIP) and text towers: not defined by the method
      (``UnsupportedModelError`` / ``ValueError``).

    The model is never modified: attention probabilities are recomputed from q and k through the attention
    adapters, a zero probe is added to them, and the module's output is replaced by one computed from them
    (checked numerically against the module's own); block outputs are read by hooks that are removed, even on
    error, and are inert in other threads (calls on one model hold its lock, see :mod:`captum_gradeclip.hooking`).
    Images of any size and aspect ratio are explained on their own patch grid; batches are explained in one pass
    (each image against its own target).

    Args:
        forward_func (ImageTextSimilarity): the scorer.
        layers (nn.Module or list of nn.Module, optional): transformer blocks of the scorer's image tower (or their
            self-attention modules), in any order. Default: every block (``tower.token_blocks()``).
        feature (str, optional): ``"pooled"`` (the tower's own pooling of each layer's tokens) or ``"mean"`` (the
            mean of the tokens; towers without an attention pooler only). Default: ``"pooled"``
        device_ids (list of int, optional): kept for Captum's signature. Default: None

    Examples::

        >>> blocks = list(model.visual.transformer.resblocks)
        >>> heat = LeGrad(scorer).attribute(images, target=0)               # (N, 1, h, w), in [0, 1]
        >>> last3 = LeGrad(scorer, blocks[-3:]).attribute(images, target=[0, 1])
    """

    text_supported = False

    def __init__(self, forward_func: Callable, layers: LayerSpec = None, feature: str = "pooled",
                 device_ids: Optional[List[int]] = None) -> None:
        tower = scorer_tower(forward_func, type(self).__name__)
        if tower.side != "image":
            raise ValueError("LeGrad explains images only (the method is defined for vision transformers): pass an "
                             "ImageTextSimilarity scorer")
        head = tower.token_head()
        candidates = tower.token_blocks()
        family = f"{type(tower.model).__name__} ({type(tower).__name__})"
        if head is None or not candidates:
            raise UnsupportedModelError(
                f"LeGrad needs transformer blocks whose output tokens the tower can embed; the image tower of "
                f"{family} has none (e.g. a ResNet CLIP)")
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        self.pooler = tower.attention_pooler()
        if feature == "mean" and self.pooler is not None:
            raise ValueError(f"feature='mean' replaces a class token or average pooling; the image tower of {family} "
                             "is pooled by an attention pooler: use feature='pooled'")
        blocks = _chosen_blocks(tower, candidates, layers)
        super().__init__(forward_func, blocks, device_ids)
        self.head = head
        self.feature = feature
        if self.pooler is None:
            self.probed = [tower.attention_of(b) for b in blocks]
        else:
            self.probed = [tower.attention_of(self.pooler)]
        for module in self.probed:
            attention_adapter(module)  # UnsupportedModelError for unknown attention modules, now

    @log_usage()
    def attribute(self, inputs: Union[Tensor, Tuple[Tensor, ...]], target: TargetType = None,
                  additional_forward_args: Any = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""LeGrad maps over the patch grid.

        Args:
            inputs (Tensor or tuple of one Tensor): images ``(N, 3, H, W)`` (any size the tower accepts), or what the
                scorer takes (SigLIP 2 patches).
            target (int, tuple, Tensor or list, optional): the scorer's column to explain (Captum semantics);
                None only for a one-column scorer. Default: None
            additional_forward_args (Any, optional): extra scorer arguments (SigLIP 2 patch mask and shapes).

        Returns:
            *Tensor* or *tuple[Tensor]*: ``(N, 1, h, w)``, min-max normalised per image to ``[0, 1]``.
        """
        return self._run(inputs, target, additional_forward_args)

    # ------------------------------------------------------------------------------------------------- the method
    def _token_map(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout,
                   target: TargetType) -> Tensor:
        scores, tokens, probe_records = self._forward(inputs, extra, layout)
        cols = target_columns(scores, target)
        with torch.enable_grad():
            total: Optional[Tensor] = None
            pooler_hooks: List[Hook] = []
            if self.pooler is not None:
                probe_records, pooler_hooks = _probe_hooks(self.probed, layout.allowed)
            with hooked(pooler_hooks):
                for z in tokens:
                    if self.feature == "mean":
                        z = z.mean(dim=1, keepdim=True).expand_as(z)
                    s = selected_scores(self.forward_func.score(self.head(z, inputs, *extra)), cols).sum()
                    total = s if total is None else total + s
            probes = [p for rec in probe_records for p in rec.extra.get("probe", [])]
            if len(probes) != len(tokens):
                raise RuntimeError(f"LeGrad expected one attention map per explained layer ({len(tokens)}), the "
                                   f"tower's head produced {len(probes)}")
            assert total is not None
            grads = torch.autograd.grad(total, probes, allow_unused=True)
        maps = []
        for probe, grad in zip(probes, grads):
            g = torch.zeros_like(probe, dtype=torch.float32) if grad is None else grad.float()
            maps.append(g.clamp(min=0).mean(dim=1).mean(dim=1))  # heads, then query rows: (N, Lk)
        return _min_max(torch.stack(maps).mean(dim=0), layout.report_mask.to(maps[0].device))

    def _forward(self, inputs: Tensor, extra: Tuple[Any, ...], layout: TokenLayout
                 ) -> Tuple[Tensor, List[Tensor], List[AttentionRecord]]:
        """The scorer's output, each explained block's output tokens (batch first, in execution order) and, for
        towers without a pooler, the probe records of the blocks' attention (graph from each probe to its
        block's output only: the tokens passed on to the next block are detached)."""
        records: List[AttentionRecord] = []
        hooks: List[Hook] = []
        if self.pooler is None:
            records, hooks = _probe_hooks(self.probed, layout.allowed)
        outputs: List[Tuple[int, Tensor]] = []
        runs = [0] * len(self.blocks)
        graph = self.pooler is None

        def block_hook(i: int, block: nn.Module) -> Callable:
            batch_first = batch_first_of(self.tower, block)

            def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
                runs[i] += 1
                y = output[0] if isinstance(output, tuple) else output
                outputs.append((i, y if batch_first else y.transpose(0, 1)))
                if not graph:
                    return None
                torch.set_grad_enabled(False)  # nothing after this block is differentiated (no_grad restores)
                y = y.detach()
                return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
            return hook

        hooks = hooks + [(b, "post", block_hook(i, b)) for i, b in enumerate(self.blocks)]
        scores = run_hooked(self.forward_func, inputs, extra, hooks)
        check_runs(self.blocks, runs)
        if graph:
            check_runs(self.probed, [len(r.extra.get("probe", [])) for r in records])
        if scores.dim() != 2:
            raise ValueError(f"the scorer must return (N, T) similarities, got shape {tuple(scores.shape)}")
        return scores, [z for _, z in outputs], records


def _probe_hooks(modules: List[nn.Module], allowed: Optional[Tensor]) -> Tuple[List[AttentionRecord], List[Hook]]:
    """Hooks that probe the attention probabilities of ``modules``: a pre-hook records the attention module's
    inputs, a post hook on its adapter's ``output_module`` replaces the output (every query row)."""
    body = probe_attention(allowed, lambda y: torch.ones(y.shape[:2], dtype=torch.bool, device=y.device))
    records = [AttentionRecord(attention_adapter(m)) for m in modules]
    hooks: List[Hook] = []
    for module, rec in zip(modules, records):
        def pre(m: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], rec: AttentionRecord = rec) -> None:
            rec.args, rec.kwargs = args, kwargs

        def post(m: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any,
                 rec: AttentionRecord = rec) -> Any:
            return body(rec, rec.adapter.module, rec.args, rec.kwargs, output)

        hooks += [(module, "pre", pre), (rec.adapter.output_module, "post", post)]
    return records, hooks


def _chosen_blocks(tower: Tower, candidates: List[nn.Module], layers: LayerSpec) -> List[nn.Module]:
    """The explained blocks in the tower's order: ``layers`` (blocks or their attention modules) or every block."""
    given = as_module_list(layers)
    if given is None:
        return list(candidates)
    by_id = {id(b): b for b in candidates}
    for b in candidates:
        by_id.setdefault(id(tower.attention_of(b)), b)
    chosen = []
    for layer in given:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layers must be nn.Modules (blocks of the image tower), got {type(layer).__name__}")
        block = by_id.get(id(layer))
        if block is None:
            raise ValueError(
                f"{type(layer).__name__} is not a transformer block (or its attention) of the image tower "
                f"{type(tower.root).__name__}; LeGrad explains the blocks of tower.token_blocks() (an attention "
                "pooler is used through each layer's head, not as a layer)")
        if any(block is c for c in chosen):
            raise ValueError(f"layer {type(layer).__name__} was given twice")
        chosen.append(block)
    order = {id(b): i for i, b in enumerate(candidates)}
    return sorted(chosen, key=lambda b: order[id(b)])


def _min_max(values: Tensor, keep: Tensor) -> Tensor:
    """Per-row min-max normalisation over the kept positions (zero elsewhere; a constant row gives zeros)."""
    keep = keep.to(torch.bool)
    inf = torch.tensor(float("inf"), device=values.device)
    low = torch.where(keep, values, inf).amin(dim=1, keepdim=True)
    high = torch.where(keep, values, -inf).amax(dim=1, keepdim=True)
    span = (high - low).clamp_min(torch.finfo(values.dtype).tiny)
    return torch.where(keep, (values - low) / span, torch.zeros_like(values))
