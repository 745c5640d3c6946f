"""Which gradient route a call takes: :func:`choose_route`, the one place that decides."""

from __future__ import annotations

from typing import Dict, Tuple, Type

from ..adapters.base import TokenLayout
from .backward import Backward
from .base import GradientRoute, RouteSetup
from .cut_path import CutPathRoute
from .full_backward import FullBackwardRoute
from .pooled_tail import PooledTailRoute
from .row_tail import RowTailRoute

#: The routes by name, as ``GradECLIP(gradient_route=...)`` takes them.
ROUTES: Dict[str, Type[GradientRoute]] = {
    route.name: route for route in (FullBackwardRoute, PooledTailRoute, CutPathRoute, RowTailRoute)}
#: The names ``GradECLIP(gradient_route=...)`` accepts: ``"auto"`` and the routes.
ROUTE_NAMES: Tuple[str, ...] = ("auto",) + tuple(ROUTES)
#: The order in which ``"auto"`` tries the fast routes (the full backward applies everywhere).
_FAST_ROUTES = (PooledTailRoute, RowTailRoute, CutPathRoute)


def choose_route(setup: RouteSetup, layout: TokenLayout, backward: Backward, name: str = "auto") -> GradientRoute:
    """The gradient route of one call.

    ``"auto"``: the pooled tail (one explained layer with a known tail), else the row tail (causal towers), else
    the cut path (several image layers with a pooled tail), else the full backward; the row tail and the cut path
    neither explain the authors' single-head variant nor towers pooled by averaging. A named route is taken
    wherever it applies.

    Args:
        setup (RouteSetup): the explainer's scorer, tower, explained modules and variant.
        layout (TokenLayout): the call's token layout.
        backward (Backward): the call's backward machinery.
        name (str, optional): one of :data:`ROUTE_NAMES`. Default: ``"auto"``

    Returns:
        GradientRoute: the route, ready to record the forward pass.

    Raises:
        ValueError: a named route that does not apply to this tower, these layers or these inputs.
    """
    candidates = _FAST_ROUTES + (FullBackwardRoute,) if name == "auto" else (ROUTES[name],)
    for route_type in candidates:
        route = route_type.build(setup, layout, backward)
        if route is not None:
            return route
    raise ValueError(
        f"gradient_route={name!r} does not apply to the {setup.tower.side} tower of {type(setup.tower.model).__name__}"
        f" with these layers (single_head={setup.single_head}); use gradient_route='auto' or 'backward'")
