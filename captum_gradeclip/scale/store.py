"""The output folder of a dataset job: deterministic Parquet parts written atomically, a manifest, an errors file.

Layout of ``DIR``::

    DIR/manifest.json        what was explained with what (model, layers, texts, versions, arguments, counts)
    DIR/errors.jsonl         one line {"image", "error", "file"} per image that could not be explained
    DIR/maps/part-000012-<fingerprint>.parquet
                             one row per (image, text) of the 13th group of images ("shard")

The items of a source are cut into shards of ``images_per_file`` consecutive images; shard ``i`` is written to
exactly one file whose name holds ``i`` and a fingerprint of the shard's images, through a temporary file renamed
into place. A file that exists is therefore complete, and nothing can be written twice: re-running a job skips
the shards whose file is there (the done-set), resumes the others, and a Ray retry of a dead worker's batch can
only produce the same file again. The errors of a shard travel in its file's metadata; ``errors.jsonl`` is
rebuilt from them at the end of each run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..atomic_files import atomic_write
from .sources import Item

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
MAPS = "maps"
_PART = re.compile(r"^part-(\d{6,})-([0-9a-f]{16})\.parquet$")
_META_ERRORS = b"gradeclip.errors"
_META_FINGERPRINT = b"gradeclip.fingerprint"


class OutputFolderError(ValueError):
    """The output folder holds another job's results (or cannot be used); nothing was changed in it."""


@dataclass(frozen=True)
class Shard:
    """A group of consecutive items written to one Parquet file."""

    index: int
    items: Tuple[Item, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return f"part-{self.index:06d}-{self.fingerprint}.parquet"


def plan_shards(items: Sequence[Item], images_per_file: int) -> List[Shard]:
    """Cut ``items`` into shards of ``images_per_file`` (the last may be shorter), each with the fingerprint of
    its images (key, file, position in the file, captions)."""
    shards = []
    for index, start in enumerate(range(0, len(items), images_per_file)):
        chunk = tuple(items[start:start + images_per_file])
        digest = hashlib.sha256(json.dumps([[it.key, it.path, it.offset, it.size, list(it.captions)]
                                            for it in chunk]).encode("utf-8")).hexdigest()[:16]
        shards.append(Shard(index=index, items=chunk, fingerprint=digest))
    return shards


def part_schema(word_maps: bool) -> Any:
    """The Parquet schema of the output rows (one row per image and text)."""
    import pyarrow as pa
    fields = [pa.field("image", pa.string()), pa.field("text", pa.string()), pa.field("score", pa.float32()),
              pa.field("map", pa.list_(pa.float32())), pa.field("map_shape", pa.list_(pa.int32()))]
    if word_maps:
        fields += [pa.field("word_tokens", pa.list_(pa.string())), pa.field("word_scores", pa.list_(pa.float32()))]
    return pa.schema(fields)


def pairs_table(results: Sequence[Dict[str, Any]], word_maps: bool) -> Tuple[Any, List[Dict[str, str]]]:
    """The output rows of explained images, in the given order, one per (image, text), and the errors.

    Args:
        results (sequence of dict): one per image, as the explaining stage returns them (``key``, ``texts``,
            ``scores``, ``maps`` as float32 bytes of ``(T, h, w)``, ``map_shape``, ``word_tokens``,
            ``word_scores``, ``error``).
        word_maps (bool): include the word columns.

    Returns:
        (pyarrow.Table, list of dict): the rows (:func:`part_schema`) and ``{"image", "error"}`` per failed image.
    """
    import numpy as np
    import pyarrow as pa
    errors: List[Dict[str, str]] = []
    cols: Dict[str, List[Any]] = {"image": [], "text": [], "score": [], "map_shape": [], "word_tokens": [],
                                  "word_scores": []}
    flat: List[Any] = []
    lengths: List[int] = []
    for r in results:
        if r["error"]:
            errors.append({"image": r["key"], "error": r["error"]})
            continue
        h, w = r["map_shape"]
        maps = np.frombuffer(r["maps"], dtype=np.float32).reshape(len(r["texts"]), h * w)
        flat.append(maps.reshape(-1))
        lengths.extend([h * w] * len(r["texts"]))
        cols["image"].extend([r["key"]] * len(r["texts"]))
        cols["text"].extend(r["texts"])
        cols["score"].extend(r["scores"])
        cols["map_shape"].extend([[h, w]] * len(r["texts"]))
        if word_maps:
            cols["word_tokens"].extend(r["word_tokens"])
            cols["word_scores"].extend(r["word_scores"])
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0, dtype=np.float32)
    schema = part_schema(word_maps)
    arrays = {"map": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))}
    for name in schema.names:
        if name != "map":
            arrays[name] = pa.array(cols[name], type=schema.field(name).type)
    return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema), errors


class OutputFolder:
    """The output folder ``DIR`` of one job (see the module docstring for its layout).

    Args:
        root (str or Path): the folder; created on :meth:`claim`.
    """

    def __init__(self, root: Any) -> None:
        self.root = Path(root)
        self.maps = self.root / MAPS

    # ------------------------------------------------------------------------------------------------ manifest
    def read_manifest(self) -> Optional[Dict[str, Any]]:
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise OutputFolderError(f"{path} is not a readable manifest ({err}); is {self.root} the output of "
                                    "another program? Choose another --out") from None

    def check_job(self, job: Dict[str, Any]) -> None:
        """Refuse a folder that holds the results of a different job (another model, texts, layers, source...):
        mixing them would make the output wrong. Raises :class:`OutputFolderError`, changing nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputFolderError(f"--out {self.root} is a file, not a folder")
        manifest = self.read_manifest()
        if manifest is None:
            if self.maps.exists() and any(self.maps.iterdir()):
                raise OutputFolderError(f"{self.maps} holds files but {self.root} has no {MANIFEST}: choose an "
                                        "empty or new --out")
            return
        before = manifest.get("job", {})
        differ = sorted(k for k in set(before) | set(job) if before.get(k) != job.get(k))
        if differ:
            raise OutputFolderError(f"{self.root} holds the results of a different job (it differs in "
                                    f"{', '.join(differ)}); use another --out, or delete the folder to start over")

    def write_manifest(self, manifest: Dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(self.root / MANIFEST, lambda p: p.write_text(text + "\n", encoding="utf-8"))

    # ------------------------------------------------------------------------------------------------ done-set
    def pending(self, shards: Sequence[Shard]) -> Tuple[List[Shard], List[str]]:
        """The shards still to explain, and the notes of what was cleaned up.

        Leftover temporary files are removed; a part file is done when its name matches a planned shard and
        its Parquet footer reads back with that shard's fingerprint; any other part file (a shard of an older
        listing of a changed source, or an unreadable file) is removed, so that no image appears twice.
        """
        import pyarrow.parquet as pq
        self.maps.mkdir(parents=True, exist_ok=True)
        wanted = {s.name: s for s in shards}
        done, notes = set(), []
        for path in sorted(self.maps.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink()
                notes.append(f"removed the unfinished file {path.name}")
                continue
            if not _PART.match(path.name):
                continue
            shard = wanted.get(path.name)
            if shard is None:
                path.unlink()
                notes.append(f"removed {path.name}: its images are no longer in the source in this grouping")
                continue
            try:
                meta = pq.read_metadata(path).metadata or {}
            except Exception:  # pyarrow raises several types for a damaged file
                meta = {}
            if meta.get(_META_FINGERPRINT, b"").decode() != shard.fingerprint:
                path.unlink()
                notes.append(f"removed {path.name}: not a complete part file; it is explained again")
                continue
            done.add(path.name)
        return [s for s in shards if s.name not in done], notes

    # ------------------------------------------------------------------------------------------------- parts
    def write_part(self, shard: Shard, table: Any, errors: List[Dict[str, str]]) -> Path:
        """Write one shard's rows (a table of :func:`part_schema`) and its errors, atomically."""
        import pyarrow.parquet as pq
        table = table.replace_schema_metadata({
            _META_FINGERPRINT: shard.fingerprint.encode(),
            _META_ERRORS: json.dumps(errors, ensure_ascii=False).encode("utf-8")})
        path = self.maps / shard.name
        atomic_write(path, lambda p: pq.write_table(table, str(p)))
        return path

    def collect_errors(self) -> List[Dict[str, str]]:
        """The errors recorded in every part file, in shard order, each with the part file that holds its shard
        (delete that file and re-run to try the image again); also written to ``errors.jsonl``."""
        import pyarrow.parquet as pq
        errors: List[Dict[str, str]] = []
        for path in sorted(self.maps.glob("part-*.parquet")):
            meta = pq.read_metadata(path).metadata or {}
            errors.extend(dict(e, file=f"{MAPS}/{path.name}")
                          for e in json.loads(meta.get(_META_ERRORS, b"[]").decode("utf-8")))
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        atomic_write(self.root / ERRORS, lambda p: p.write_text(text, encoding="utf-8"))
        return errors


def read_results(out: Any, columns: Optional[Sequence[str]] = None) -> Any:
    """Every row of a dataset job's output folder as one ``pyarrow.Table``.

    Args:
        out (str or Path): the job's ``--out`` folder.
        columns (sequence of str, optional): the columns to read. Default: all.

    Returns:
        pyarrow.Table: one row per (image, text); ``.to_pandas()`` for a DataFrame.

    Examples::

        >>> import numpy as np
        >>> table = read_results("maps_out")
        >>> row = table.slice(0, 1).to_pylist()[0]
        >>> heat = np.asarray(row["map"], dtype=np.float32).reshape(row["map_shape"])
    """
    import pyarrow.parquet as pq
    folder = Path(out) / MAPS
    if not folder.is_dir():
        raise OutputFolderError(f"{out} is not the output folder of a dataset job (no {MAPS}/ inside)")
    return pq.read_table(folder, columns=list(columns) if columns is not None else None)
