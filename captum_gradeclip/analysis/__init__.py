"""The paper's analyses as reusable functions: what Grad-ECLIP reveals about how CLIP matches images and text.

1. The mechanism of matching: :func:`image_layer_profile`, :func:`text_layer_profile` (where in depth),
   :func:`cross_modal_correspondence` (do the words that matter name the objects the image map finds?).
2. Attribution identification: :func:`multi_object_pointing` (the pointing game as scenes get crowded, against
   chance), :func:`attribute_binding` (does the model, and its explanation, bind attributes to objects?) and
   :func:`relation_swap` (does it prefer "A left of B" to "B left of A", and where do the maps move?).
3. Concreteness and word usage: :func:`word_importance` and :func:`rating_correlation` (mean word importance
   against word ratings such as concreteness norms, Spearman with a bootstrap interval).

Every function takes a supported model (open_clip or HuggingFace) or maps it already computed, with images,
tokenised captions and, where needed, masks, and returns plain dataclasses of tensors and floats.
``captum_gradeclip.analysis.plots`` draws them. ``benchmarks/analyses.py`` runs them on the shipped models.
"""

from ._explain import image_maps, word_maps, word_strings
from .concreteness import (RatingCorrelation, WordImportance, class_ratings, load_word_ratings, rating_correlation,
                           word_importance)
from .identification import (Binding, PointingByCount, RelationSwap, attribute_binding, chance_of_pointing,
                             multi_object_pointing, relation_swap)
from .mechanism import Correspondence, LayerProfile, cross_modal_correspondence, image_layer_profile, \
    text_layer_profile
from .statistics import average_ranks, bootstrap_spearman, spearman

__all__ = [
    "Binding", "Correspondence", "LayerProfile", "PointingByCount", "RatingCorrelation", "RelationSwap",
    "WordImportance",
    "attribute_binding", "average_ranks", "bootstrap_spearman", "chance_of_pointing", "class_ratings",
    "cross_modal_correspondence", "image_layer_profile", "image_maps", "load_word_ratings", "multi_object_pointing",
    "rating_correlation", "relation_swap", "spearman", "text_layer_profile", "word_importance", "word_maps",
    "word_strings",
]
