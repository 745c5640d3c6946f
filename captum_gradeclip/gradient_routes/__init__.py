"""Gradient routes of Grad-ECLIP: the ways of getting ``dS/dy`` at the explained layers' query rows.

- :class:`FullBackwardRoute` (``"backward"``): the forward's own graph, every tower and layer choice.
- :class:`PooledTailRoute` (``"pooled_tail"``): one explained layer and a known one-row tail to the embedding.
- :class:`CutPathRoute` (``"cut"``): several image layers; the graph is cut at the last block's attention input.
- :class:`RowTailRoute` (``"row_tail"``): causal text towers; the query row re-run from the first explained block.

:func:`choose_route` picks one per call; :class:`~.backward.Backward` holds the backward machinery they share.
"""

from .backward import AUTO_MAX_ROWS, AUTO_MAX_TARGETS, Backward, chunk_slices
from .base import ForwardRecord, GradientRoute, LayerRecord, RouteReport, RouteSetup
from .queries import query_output, query_positions
from .cut_path import CutPathRoute, CutRecord
from .full_backward import FullBackwardRoute
from .pooled_tail import PooledTailRoute
from .row_tail import RowTailRecord, RowTailRoute
from .selection import ROUTE_NAMES, ROUTES, choose_route

__all__ = [
    "AUTO_MAX_ROWS",
    "AUTO_MAX_TARGETS",
    "Backward",
    "CutPathRoute",
    "CutRecord",
    "ForwardRecord",
    "FullBackwardRoute",
    "GradientRoute",
    "LayerRecord",
    "PooledTailRoute",
    "ROUTES",
    "ROUTE_NAMES",
    "RouteReport",
    "RouteSetup",
    "RowTailRecord",
    "RowTailRoute",
    "chunk_slices",
    "choose_route",
    "query_output",
    "query_positions",
]
