"""Room for fine-tuning captions in the shipped shapes CLIP: more words, a longer context.

The shipped open_clip shapes model of version 0.1 (``load_shapes_clip("open_clip_single")``, the starting point
of :mod:`captum_gradeclip.finetune` for ``model="shapes"``) has a word-level vocabulary
of 16 words (``a an the photo image of`` + colours + shapes) and a context of 8 tokens: enough for ``"a red
circle"``, not for ``"a red circle, a blue square and a green cross"``. :func:`extend_shapes_clip` returns a new
model (the shipped one is not touched) with more words and a longer context that computes **exactly** the same
features for every text the old tokenizer accepts:

- the token embedding keeps the old rows; the end-of-text token keeps its row but moves to the new largest id
  (open_clip pools the text at ``argmax(ids)``); new words start at the mean of the old word rows;
- the positional embedding keeps the old rows; new positions start as copies of the last old one;
- the causal mask is rebuilt by open_clip for the new length.

Fine-tuning then learns the new rows. Real open_clip models (BPE tokenizers, 77 tokens) need none of this.

Examples:
    >>> from captum_gradeclip.zoo import load_shapes_clip
    >>> from captum_gradeclip.data import SCENE_WORDS
    >>> old = load_shapes_clip("open_clip_single")
    >>> new = extend_shapes_clip(old, SCENE_WORDS, context_length=16)
    >>> bool(torch.allclose(new.encode_texts(["a red circle"]), old.encode_texts(["a red circle"]), atol=1e-6))
    True
    >>> new.tokenize("a red circle, a blue square and a green cross").shape
    torch.Size([1, 16])
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..zoo import ShapesCLIP, ShapesTokenizer, build_model

__all__ = ["extend_shapes_clip", "extend_text_embeddings"]


def extend_text_embeddings(token_embedding: torch.Tensor, positional_embedding: torch.Tensor,
                           old: ShapesTokenizer, new: ShapesTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and position embeddings for ``new``, a tokenizer whose words start with ``old``'s, that keep the
    features of every text ``old`` accepts: the old rows stay, new words start at the mean old word row, the
    end-of-text row moves to the new largest id, new positions start as copies of the last old one.

    Args:
        token_embedding: ``(old.vocab_size, D)``.
        positional_embedding: ``(old.context_length, D)``.
        old: the tokenizer the embeddings belong to.
        new: the extended tokenizer (``new.words[:len(old.words)] == old.words``, context at least ``old``'s).

    Returns:
        ``(token_embedding (new.vocab_size, D), positional_embedding (new.context_length, D))``, new tensors.
    """
    emb = token_embedding.new_empty(new.vocab_size, token_embedding.shape[1])
    emb[: old.eot_id] = token_embedding[: old.eot_id]                         # pad, sot and the old words
    emb[old.eot_id: new.eot_id] = token_embedding[2: old.eot_id].mean(0)      # new words: the mean old word
    emb[new.eot_id] = token_embedding[old.eot_id]                             # end of text, now the largest id
    extra = positional_embedding[-1:].expand(new.context_length - positional_embedding.shape[0], -1)
    return emb, torch.cat([positional_embedding, extra]).contiguous()


def extend_shapes_clip(clip: ShapesCLIP, words: Sequence[str], context_length: int) -> ShapesCLIP:
    """A copy of an open_clip shapes CLIP with extra vocabulary words and a longer text context.

    Args:
        clip: a loaded open_clip :class:`~captum_gradeclip.zoo.ShapesCLIP` (not modified).
        words: words the captions need; those already in the vocabulary are skipped, the others appended in
            the given order (so the same ``words`` always give the same ids).
        context_length: the new context length (at least the old one).

    Returns:
        ShapesCLIP: a new model (fp32, same device, eval mode), tokenizer and config; ``config["extended"]``
        records ``words`` and ``context_length`` so that it can be rebuilt.

    Raises:
        ValueError: For an HF shapes model, a shorter context, or invalid words.
    """
    if clip.kind != "open_clip":
        raise ValueError(f"extend_shapes_clip supports the open_clip shapes model, got kind {clip.kind!r}")
    old_tok = clip.tokenizer
    if not isinstance(context_length, int) or context_length < old_tok.context_length:
        raise ValueError(f"context_length must be an int >= {old_tok.context_length}, got {context_length!r}")
    new_words = [w for w in dict.fromkeys(words) if w not in old_tok.words]
    tok = ShapesTokenizer(words=list(old_tok.words) + new_words, context_length=context_length)
    cfg = copy.deepcopy(clip.config)
    text_cfg = cfg["model_cfg"]["text_cfg"]
    text_cfg.update(vocab_size=tok.vocab_size, context_length=context_length, eos_id=tok.eot_id,
                    pad_id=tok.pad_id)
    cfg["tokenizer"] = tok.to_dict()
    cfg["extended"] = {"words": list(words), "context_length": context_length}
    dev = clip.device
    model = build_model("open_clip", cfg["model_cfg"]).to(dev)
    state = {k: v.detach().clone() for k, v in clip.model.state_dict().items()}
    state["token_embedding.weight"], state["positional_embedding"] = extend_text_embeddings(
        state["token_embedding.weight"], state["positional_embedding"], old_tok, tok)
    model.load_state_dict(state, strict=True)
    return ShapesCLIP(model=model.float().eval(), tokenizer=tok, kind="open_clip", image_size=clip.image_size,
                      mean=clip.mean, std=clip.std, class_names=list(clip.class_names), config=cfg)
