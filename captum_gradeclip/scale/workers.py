"""The two stages that run on Ray: decoding images (stateless tasks) and explaining them (model actors).

Both take and return ``pyarrow.Table`` batches with one row per image, so that the rows of an image never
split across batches. Decoded images travel as the bytes of ``prepare_image``'s float32 ``(3, H, W)`` array,
explained ones as the bytes of a float32 ``(T, h, w)`` array of maps (one per text). A model actor given
``decode`` arguments runs :func:`decode_batch` on its own batches instead (CPU workers: no decoding processes
beside them, see :func:`captum_gradeclip.scale.explain_dataset`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .sources import Item, read_item

DECODED_COLUMNS = ("shard", "index", "key", "captions", "pixels", "shape", "error")
EXPLAINED_COLUMNS = ("shard", "index", "key", "texts", "scores", "maps", "map_shape", "word_tokens",
                     "word_scores", "error")


def _table(columns: Dict[str, List[Any]], types: Dict[str, Any]) -> Any:
    import pyarrow as pa
    return pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})


def decode_batch(batch: Any, *, image_size: int, patch: Optional[int], mode: str, max_pixels: int,
                 max_bytes: int) -> Any:
    """Read, decode and resize the images of a batch (a Ray Data map on tasks).

    Args:
        batch (pyarrow.Table): rows ``shard, index, key, path, captions, offset, size`` (one per image).
        image_size (int), patch (int or None), mode (str): the arguments of
            :func:`captum_gradeclip.loading.prepare_image`.
        max_pixels (int), max_bytes (int): the limits of :func:`captum_gradeclip.image_io.load_image`.

    Returns:
        pyarrow.Table: rows ``shard, index, key, captions, pixels, shape, error``; an image that cannot be read
        has empty ``pixels`` and the reason in ``error``.
    """
    import pyarrow as pa

    from ..loading import prepare_image
    from ..image_io import ImageLoadError, load_image
    out: Dict[str, List[Any]] = {name: [] for name in DECODED_COLUMNS}
    for row in batch.to_pylist():
        item = Item(key=row["key"], path=row["path"], captions=tuple(row["captions"]), offset=row["offset"],
                    size=row["size"])
        pixels, shape, error = b"", [], ""
        try:
            image = load_image(read_item(item, max_bytes), max_pixels=max_pixels, max_bytes=max_bytes, name=item.key)
            array = prepare_image(image, image_size, patch, mode).numpy()
            pixels, shape = array.tobytes(), list(array.shape)
        except ImageLoadError as err:
            error = str(err)
        except OSError as err:  # a tar shard that went away or cannot be read
            error = f"cannot read image {item.key}: {err}"
        for name, value in (("shard", row["shard"]), ("index", row["index"]), ("key", row["key"]),
                            ("captions", row["captions"]), ("pixels", pixels), ("shape", shape), ("error", error)):
            out[name].append(value)
    return _table(out, {"shard": pa.int64(), "index": pa.int64(), "key": pa.string(),
                        "captions": pa.list_(pa.string()), "pixels": pa.binary(), "shape": pa.list_(pa.int32()),
                        "error": pa.string()})


class Explainer:
    """A Ray actor (through Ray Data's actor pool) that loads the model once and explains whole batches.

    Each image is explained against the job's prompts followed by its own captions. Images of the same size
    are explained together with one :func:`captum_gradeclip.explanations.explain_images` call (``attribute_all`` over
    the union of their texts); word maps, when asked, come from the same call when every image has the same
    texts, else per image. An image whose captions cannot be tokenized, or on which the model fails alone, is
    returned with its error; the others are explained.

    Args:
        model_args (dict): the model flags of ``gradeclip explain`` (``demo``, ``hf``, ``checkpoint``, ``model``,
            ``pretrained``).
        prompts (sequence of str): the texts every image is explained against (may be empty when every image
            has captions).
        layers (int, optional): the number of last blocks explained (default: the library's).
        single_head (bool): reproduce the authors' released code.
        layer_rule (str, optional): how several layers are combined (None: the paper's rule for each side).
        word_maps (bool): also compute every pair's word importances.
        device (str): ``cpu`` or ``cuda``.
        threads (int): torch threads of this worker (CPU).
        decode (dict, optional): the keyword arguments of :func:`decode_batch`; when given, the batches are the
            undecoded rows (``shard, index, key, path, captions, offset, size``) and the actor decodes them
            itself, in its own process and thread. Default: None (the batches come decoded).
    """

    def __init__(self, model_args: Dict[str, Any], prompts: Sequence[str], layers: Optional[int],
                 single_head: bool, word_maps: bool, device: str, threads: int,
                 layer_rule: Optional[str] = None, decode: Optional[Dict[str, Any]] = None) -> None:
        import torch

        from ..loading import load_model
        torch.set_num_threads(max(1, int(threads)))
        self.device = device
        self.lm = load_model(device, **model_args)
        self.prompts = list(prompts)
        self.layers = layers
        self.single_head = single_head
        self.layer_rule = layer_rule
        self.word_maps = word_maps
        self.decode = dict(decode) if decode is not None else None
        self._tokenizable: Dict[str, str] = {}  # text -> "" (fine) or the tokenizer's complaint

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        if self.decode is not None:
            batch = decode_batch(batch, **self.decode)
        rows = batch.to_pylist()
        results: List[Dict[str, Any]] = [self._empty(row) for row in rows]
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for n, row in enumerate(rows):
            if row["error"]:
                results[n]["error"] = row["error"]
                continue
            texts, problem = self._texts_of(row["captions"])
            if problem:
                results[n]["error"] = problem
                continue
            results[n]["texts"] = texts
            groups.setdefault(tuple(row["shape"]), []).append(n)
        for shape, members in groups.items():
            self._explain_group(rows, results, members, shape)
        return _table({name: [r[name] for r in results] for name in EXPLAINED_COLUMNS},
                      {"shard": pa.int64(), "index": pa.int64(), "key": pa.string(), "texts": pa.list_(pa.string()),
                       "scores": pa.list_(pa.float32()), "maps": pa.binary(), "map_shape": pa.list_(pa.int32()),
                       "word_tokens": pa.list_(pa.list_(pa.string())),
                       "word_scores": pa.list_(pa.list_(pa.float32())), "error": pa.string()})

    # --------------------------------------------------------------------------------------------------------
    @staticmethod
    def _empty(row: Dict[str, Any]) -> Dict[str, Any]:
        return {"shard": row["shard"], "index": row["index"], "key": row["key"], "texts": [], "scores": [],
                "maps": b"", "map_shape": [], "word_tokens": [], "word_scores": [], "error": ""}

    def _texts_of(self, captions: Sequence[str]) -> Tuple[List[str], str]:
        texts = self.prompts + [c for c in captions if c not in self.prompts]
        if not texts:
            return [], "no text to explain against: the image has no caption and no --text was given"
        for text in texts:
            if text not in self._tokenizable:
                try:
                    self.lm.tokenize([text])
                    self._tokenizable[text] = ""
                except (ValueError, KeyError) as err:
                    self._tokenizable[text] = f"caption {text!r} cannot be tokenized: {err}"
            if self._tokenizable[text]:
                return [], self._tokenizable[text]
        return texts, ""

    def _explain_group(self, rows: List[Dict[str, Any]], results: List[Dict[str, Any]], members: List[int],
                       shape: Tuple[int, ...]) -> None:
        try:
            self._explain(rows, results, members, shape)
        except (ValueError, RuntimeError) as err:
            if len(members) == 1:
                results[members[0]]["error"] = f"explaining failed: {str(err).splitlines()[0] if str(err) else err!r}"
                return
            for n in members:  # isolate the image that fails
                self._explain_group(rows, results, [n], shape)

    def _explain(self, rows: List[Dict[str, Any]], results: List[Dict[str, Any]], members: List[int],
                 shape: Tuple[int, ...]) -> None:
        import torch

        from ..explanations import explain_images
        images = torch.from_numpy(np.stack([np.frombuffer(rows[n]["pixels"], dtype=np.float32).reshape(shape)
                                            for n in members]))
        union: List[str] = []  # every text of the group once, in order of appearance
        for n in members:
            for text in results[n]["texts"]:
                if text not in union:
                    union.append(text)
        same_texts = all(results[n]["texts"] == union for n in members)
        explain = "both" if self.word_maps and same_texts else "image"
        kwargs = dict(layers=self.layers, single_head=self.single_head, device=self.device,
                      layer_rule=self.layer_rule)
        exps = explain_images(self.lm, images, union, explain=explain, **kwargs)
        for j, n in enumerate(members):
            texts = results[n]["texts"]
            cols = [union.index(t) for t in texts]
            exp = exps[j]
            maps = np.ascontiguousarray(exp.image_maps[cols], dtype=np.float32)
            results[n].update(scores=exp.similarity[cols].astype(np.float32).tolist(), maps=maps.tobytes(),
                              map_shape=list(maps.shape[1:]))
            if self.word_maps:
                if exp.words is None:  # the image's own texts, against this image only
                    exp = explain_images(self.lm, images[j:j + 1], texts, explain="text", **kwargs)[0]
                results[n].update(word_tokens=[list(w) for w in exp.words],
                                  word_scores=[np.asarray(s, dtype=np.float32).tolist() for s in exp.word_scores])
