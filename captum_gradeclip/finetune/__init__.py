"""Grad-ECLIP-guided fine-tuning of CLIP models (the application of Zhao et al.; see ``docs/finetune.md``).

The Grad-ECLIP map of a phrase of a caption says which part of the image the phrase is about. Fine-tuning
pools the image's dense patch features with that map into a *region feature* and aligns it with the phrase's
text feature (the region-phrase loss), on top of CLIP's usual image-caption contrastive loss.

- :mod:`~captum_gradeclip.finetune.phrases`: phrases from captions (pluggable; a word-list default);
- :mod:`~captum_gradeclip.finetune.regions`: dense features, Grad-ECLIP maps of phrases, region pooling;
- :mod:`~captum_gradeclip.finetune.losses`: the contrastive and region-phrase losses;
- :mod:`~captum_gradeclip.finetune.data`: image-caption data (shapes world, folders, CSV, Parquet);
- :mod:`~captum_gradeclip.finetune.distributed`: torchrun / DDP set-up and gathering with gradients;
- :mod:`~captum_gradeclip.finetune.checkpoint`: atomic safetensors checkpoints;
- :mod:`~captum_gradeclip.finetune.train`: the training loop and its command line
  (``torchrun --nproc_per_node N -m captum_gradeclip.finetune ...``);
- :mod:`~captum_gradeclip.finetune.evaluate`: region classification, zero-shot and pointing game on held-out
  shapes scenes.
"""

from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .losses import clip_contrastive_loss, region_phrase_loss
from .phrases import PhraseExtractor, WordListPhrases
from .regions import DenseImageEncoder, normalize_maps, phrase_maps, pool_regions

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DenseImageEncoder",
    "PhraseExtractor",
    "WordListPhrases",
    "clip_contrastive_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "normalize_maps",
    "phrase_maps",
    "pool_regions",
    "region_phrase_loss",
    "save_checkpoint",
]
