"""Hooks on a user's model that are safe with threads: one lock per model, hooks that see only their own call.

Every explainer of this package registers forward hooks on the explained model for the length of one call and
removes them in a ``finally``. Forward hooks are attributes of the modules, so they fire for *every* forward
through a module, whichever thread runs it. Two rules make concurrent use exact:

- :func:`model_lock`: one re-entrant lock per model (a ``weakref.WeakKeyDictionary`` from the model to a
  ``threading.RLock``, so the lock goes away with the model). Each explainer holds it for its whole ``attribute``
  call (forward, backward and maps), and the scorers hold it while they encode, so calls on one model run one at
  a time, whichever explainers or scorers make them. A lock rather than per-thread bookkeeping alone, because
  on CUDA the autograd engine runs backward work on its own device threads, where the calling thread's identity
  means nothing. Calls on *different* models (e.g. one copy per worker) do not wait for each other.
- :func:`calling_thread_only`: a hook registered by a call ignores forwards run by other threads (a forward of
  the bare model that does not go through this package, and therefore not through the lock).

:func:`check_runs` then tells a layer that really ran twice in one forward pass (a block applied in a loop or
shared) from one that never ran.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Sequence

from torch import nn

from .errors import LayerNotExecutedError

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model``, created on first use (the same object for every caller).

    Args:
        model (nn.Module): the CLIP model (the scorer's ``model``, as its towers hold it).

    Returns:
        threading.RLock: hold it (``with model_lock(model): ...``) around anything that hooks or runs the model.

    Examples::

        >>> with model_lock(scorer.model):
        ...     maps = explainer.attribute(images, target=0)   # explainers take it themselves; re-entrant
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def calling_thread_only(hook: Callable) -> Callable:
    """``hook`` for forwards run by the thread that calls this function; a no-op (returns None: nothing
    changed) for forwards run by any other thread.

    Args:
        hook (Callable): a forward hook or forward pre-hook (any signature).

    Returns:
        Callable: the wrapped hook, to register in place of ``hook``.
    """
    owner = threading.get_ident()

    def guarded(*args, **kwargs):
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)

    return guarded


def check_runs(modules: Sequence[nn.Module], runs: Sequence[int]) -> None:
    """Every hooked module ran exactly once during the call's forward pass, or a LayerNotExecutedError that says
    what happened.

    Args:
        modules (sequence of nn.Module): the hooked modules, in the order of the explained layers.
        runs (sequence of int): how often each ran in the calling thread's forward pass.

    Raises:
        LayerNotExecutedError: a module that did not run (not part of what the scorer encodes), or one that ran
            several times in one forward pass (the model applies it more than once).
    """
    for i, (module, count) in enumerate(zip(modules, runs)):
        if count == 0:
            raise LayerNotExecutedError(
                f"explained layer {type(module).__name__} (#{i}) did not run during the scorer's forward pass; "
                "pass blocks of the tower that the scorer encodes")
        if count != 1:
            raise LayerNotExecutedError(
                f"explained layer {type(module).__name__} (#{i}) ran {count} times in one forward pass of the scorer "
                "(counted in the calling thread only, so not because of other threads): the model applies this "
                "module more than once (a block shared between positions or applied in a loop); explain a layer "
                "that runs once per forward pass")
