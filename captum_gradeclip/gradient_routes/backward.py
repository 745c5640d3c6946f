"""The backward machinery the gradient routes share: chunks of targets, batched pull-backs, the self-check.

Every route ends in the same question: the gradients of K chosen similarities at some leaves (probes of the
forward's graph, or the leaves of a small re-computed path). :class:`Backward` answers it for one call:

- the K targets are split into chunks (:func:`chunk_slices`: ``chunk_size``, or automatic from the token rows a
  pull-back runs over), and a chunk that runs out of memory is retried in halves (:meth:`Backward.chunked`);
- with K <= E (the embedding width) the K targets are pulled back directly; with more targets than embedding
  dimensions the E unit vectors of the embedding are pulled back and contracted with the targets' gradients at
  the embedding (:meth:`Backward.pull_back`): min(K, E) pull-backs through the network either way;
- a batched backward through an op without a batching rule is retried one vector at a time (:meth:`Backward.vjp`);
- one-row paths run with ``torch.func`` in the weights' own precision and are first checked against the
  forward's similarities (:func:`reproduces`, :meth:`Backward.row_path_gradients`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

#: Automatic chunk size: at most this many targets per batched backward ...
AUTO_MAX_TARGETS = 32
#: ... and at most this many token rows (targets x rows each) per batched backward.
AUTO_MAX_ROWS = 4096


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that a device (or the host) ran out of memory."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def transform_limit(error: BaseException) -> bool:
    """Whether ``error`` is a limitation of the batched backward or of ``torch.func``'s transforms (an op without a
    batching rule, an ``autograd.Function`` without ``setup_context``), which an unbatched backward can run."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("vmap", "batching rule", "batched", "functorch", "setup_context", "torch.func"))


def autocast_on(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled()


def reproduces(tail_scores: Tensor, scores: Tensor, low_precision: bool) -> bool:
    """Self-check of a fast route: its path must reproduce the forward's similarities (up to rounding;
    ``low_precision``: the forward ran under autocast). The one host-device sync of a fast route."""
    tol = 1e-4 if tail_scores.dtype == torch.float32 and not low_precision else 3e-2
    return tail_scores.shape == scores.shape and \
        torch.allclose(tail_scores.detach(), scores.detach().to(tail_scores.dtype), atol=tol)


def chunk_slices(k: int, rows: int, chunk_size: Optional[int] = None, max_rows: int = AUTO_MAX_ROWS) -> List[slice]:
    """Slices of the K targets that share one batched backward.

    Args:
        k (int): the number of targets.
        rows (int): token rows each target's backward runs over (N for the one-row routes, N x L for a backward
            over whole sequences).
        chunk_size (int, optional): targets per chunk; None: automatic, at most :data:`AUTO_MAX_TARGETS` and at
            most ``max_rows`` rows in all, never fewer than one target.
        max_rows (int, optional): the automatic budget of token rows per backward. Default: :data:`AUTO_MAX_ROWS`

    Returns:
        list of slice: consecutive slices covering ``range(k)``.

    Examples::

        >>> chunk_slices(7, 34, max_rows=3 * 34)
        [slice(0, 3, None), slice(3, 6, None), slice(6, 7, None)]
    """
    size = chunk_size or max(1, min(AUTO_MAX_TARGETS, max_rows // max(rows, 1)))
    return [slice(j, min(j + size, k)) for j in range(0, k, size)]


class Backward:
    """The backward passes of one call: chunking, batched vector-Jacobian products, pull-backs, self-checks.

    Args:
        score (callable): the scorer's similarity of embeddings, ``(N, E) -> (N, T)``.
        chunk_size (int, optional): targets per batched backward (None: automatic, see :func:`chunk_slices`).
        max_rows (int): the automatic budget of token rows per batched backward.
        warn (callable): ``warn(message)`` for a fast path that ``torch.func`` cannot run (warned once per
            explainer by the caller).

    Attributes:
        batches (list of int): how many vectors each batched vector-Jacobian product carried, in order.
    """

    def __init__(self, score: Callable[[Tensor], Tensor], chunk_size: Optional[int], max_rows: int,
                 warn: Callable[[str], None]) -> None:
        self.score = score
        self.chunk_size = chunk_size
        self.max_rows = max_rows
        self.warn = warn
        self.batches: List[int] = []

    def chunked(self, k: int, rows: int, run: Callable[[slice, bool], Any]) -> Iterator[Any]:
        """``run(part, last)`` for the slices of :func:`chunk_slices`, in order. A chunk that runs out of memory is
        retried in halves (with a warning; the graph is still whole, see :meth:`vjp`); a single target that does
        not fit raises the out-of-memory error itself."""
        parts = chunk_slices(k, rows, self.chunk_size, self.max_rows)
        while parts:
            part = parts.pop(0)
            try:
                result = run(part, part.stop == k)
            except RuntimeError as error:
                size = part.stop - part.start
                if not out_of_memory(error) or size == 1:
                    raise
                half = part.start + (size + 1) // 2
                warnings.warn(f"out of memory in a batched backward of {size} targets; retrying {half - part.start}"
                              f" at a time (pass chunk_size={half - part.start} or less to start there)",
                              RuntimeWarning, stacklevel=2)
                parts[:0] = [slice(part.start, half), slice(half, part.stop)]
                continue
            yield result

    def vjp(self, outputs: Tensor, wrt: List[Tensor], vectors: Tensor, retain: bool) -> List[Tensor]:
        """B vector-Jacobian products at once: ``vectors`` ``(B, *outputs.shape)``; a list of ``(B, *t.shape)``.

        The batched backward keeps the graph whatever ``retain`` says, so that a failure can be retried on it:
        an op that the batched backward cannot run (no batching rule) is retried one vector at a time, and an
        out-of-memory error is retried by :meth:`chunked` in smaller chunks (the graph is freed when the caller
        drops it). Any other error is the model's own and reaches the caller as itself. ``retain``: whether the
        caller needs the graph after this call (only the one-vector-at-a-time retry may free it)."""
        b = vectors.shape[0]
        self.batches.append(b)
        try:
            grads = torch.autograd.grad(outputs, wrt, grad_outputs=vectors, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
        except RuntimeError as error:
            if out_of_memory(error) or not transform_limit(error):
                raise
            per = [torch.autograd.grad(outputs, wrt, grad_outputs=v, retain_graph=retain or j < b - 1,
                                       allow_unused=True)
                   for j, v in enumerate(vectors)]
            grads = tuple(torch.stack([p[i] if p[i] is not None else torch.zeros_like(wrt[i]) for p in per])
                          for i in range(len(wrt)))
        return [g if g is not None else torch.zeros((b,) + tuple(t.shape), dtype=t.dtype, device=t.device)
                for g, t in zip(grads, wrt)]

    def pull_back(self, k: int, e: int, n: int, rows: int, leaves: Sequence[Tensor],
                  targets_to_leaves: Callable[[Tensor, bool], Sequence[Tensor]],
                  targets_to_embedding: Callable[[Tensor, bool], Tensor],
                  embedding_to_leaves: Callable[[Tensor, bool], Sequence[Tensor]]) -> List[Tensor]:
        """d S[n, columns[n, k]] / d ``leaves`` for every target k: a list of ``(K, *leaf.shape)``.

        The gradients all pass through the embedding ``f`` ``(N, E)``. With K <= E, batched pull-backs of the K
        targets' unit vectors run from the chosen similarities (``targets_to_leaves``). With more targets than
        embedding dimensions (zero-shot over many classes), the targets' gradients at ``f`` are taken first
        (``targets_to_embedding``: the scorer's cosine only), the E unit vectors of ``f`` are pulled back through
        the network (``embedding_to_leaves``: its Jacobian) and the two are contracted. Each callable takes a chunk
        of cotangents ``(c, N, K or E)`` and whether it is the last chunk (the graph may then be freed). ``rows``:
        token rows one pull-back runs over (for the automatic chunk size).
        """
        def unit_vectors(count: int, dtype: torch.dtype) -> Tensor:  # (count, N, count)
            return torch.eye(count, dtype=dtype, device=leaves[0].device)[:, None, :].expand(count, n, count)

        eye = unit_vectors(k, torch.float32)
        if k <= e:
            chunks = list(self.chunked(k, rows, lambda part, last: targets_to_leaves(eye[part], last)))
            return [torch.cat([c[i] for c in chunks], dim=0) for i in range(len(leaves))]
        at_embedding = torch.cat(list(self.chunked(k, n, lambda part, last: targets_to_embedding(eye[part], last))
                                      )).float()  # (K, N, E)
        basis = unit_vectors(e, leaves[0].dtype)
        sums = [torch.zeros((k,) + tuple(t.shape), dtype=torch.float32, device=t.device) for t in leaves]
        for part, grads in self.chunked(e, rows, lambda part, last: (part, embedding_to_leaves(basis[part], last))):
            for acc, g in zip(sums, grads):  # J^T u_k, in float32
                acc += torch.einsum("kne,en...->kn...", at_embedding[:, :, part], g.float())
        return [acc.to(t.dtype) for acc, t in zip(sums, leaves)]

    def target_gradients(self, embedding: Tensor, columns: Tensor, wrt: List[Tensor], rows: int) -> List[Tensor]:
        """:meth:`pull_back` through the autograd graph that the forward pass built (``wrt``: its probes), from
        the similarities ``score(embedding)`` at ``columns`` ``(N, K)``."""
        k = columns.shape[1]
        n, e = embedding.shape
        if not embedding.requires_grad:  # nothing explained reaches the embedding
            return [torch.zeros((k,) + tuple(t.shape), dtype=t.dtype, device=t.device) for t in wrt]

        def targets_to_embedding(vectors: Tensor, last: bool) -> Tensor:  # through the scorer only
            leaf = embedding.detach().requires_grad_(True)
            return self.vjp(self.score(leaf).gather(1, columns), [leaf], vectors, False)[0]

        with torch.enable_grad():
            chosen = self.score(embedding).gather(1, columns)  # (N, K)
            return self.pull_back(
                k, e, n, rows, wrt,
                lambda vectors, last: self.vjp(chosen, wrt, vectors.to(chosen.dtype), not last),
                targets_to_embedding,
                lambda vectors, last: self.vjp(embedding, wrt, vectors.to(embedding.dtype), not last))

    def row_path_gradients(self, path: Callable[..., Tensor], leaves: List[Tensor], scores: Tensor,
                           columns: Tensor) -> Optional[List[Tensor]]:
        """Gradients on a path whose graph holds one row per example (the pooled tail, the row tail).

        ``path(*leaves)`` maps the leaves (``(N, Q, D)`` each: what is differentiated) to the embedding
        ``(N, E)``. It runs once; its vector-Jacobian products for all targets of a chunk come from
        ``torch.func.vmap`` over ``torch.func.vjp``, whose batching rules keep one kernel per op whatever the
        number of targets. With more targets than embedding dimensions, the E unit vectors of the embedding are
        pulled back instead (its Jacobian) and contracted with the targets' gradients at the embedding. The path is
        first checked against the forward's similarities (None: it does not reproduce the model; the caller falls
        back to the full backward). Under autocast it runs in the weights' own precision: it is small, and
        autocast would otherwise keep low-precision copies of its weights for the backward.
        """
        from torch.func import vjp, vmap
        device = scores.device
        low_precision = autocast_on(device)
        k = columns.shape[1]
        n = scores.shape[0]
        try:
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                embedding, pull = vjp(path, *leaves)
                if not reproduces(self.score(embedding), scores, low_precision):
                    return None
                _, pull_scores = vjp(lambda f: self.score(f).gather(1, columns), embedding)
                return self.pull_back(
                    k, embedding.shape[1], n, n, leaves,
                    lambda vectors, last: vmap(pull)(vmap(pull_scores)(vectors)[0].to(embedding.dtype)),
                    lambda vectors, last: vmap(pull_scores)(vectors)[0],
                    lambda vectors, last: vmap(pull)(vectors))
        except RuntimeError as error:  # e.g. an autograd.Function without setup_context after the explained layer
            if out_of_memory(error) or not transform_limit(error):
                raise
            self.warn(f"the fast path of GradECLIP cannot run through this model with torch.func ({error}); "
                      "using the full backward instead (the same maps, slower). An autograd.Function after the "
                      "explained layer needs setup_context (and generate_vmap_rule=True) for the fast path")
            return None
