"""Where a dataset job's images come from: a folder, a CSV or Parquet table of paths, or webdataset tar shards.

A source is listed once, on the driver, into :class:`Item` records (a key, the captions, where the bytes are);
the images themselves are read later, in Ray tasks, by :func:`read_item`. Listing is deterministic (sorted
folders and shards, table order), so the same source always gives the same items in the same order: the
output folder's done-set relies on it.
"""

from __future__ import annotations

import csv
import glob
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..image_io import IMAGE_SUFFIXES

IMAGE_COLUMNS = ("image", "image_path", "path", "filepath", "file")
CAPTION_COLUMNS = ("caption", "captions", "text")
TAR_CAPTION_SUFFIXES = (".txt", ".caption")


class SourceError(ValueError):
    """A dataset source that cannot be listed: missing, empty, or in an unsupported layout."""


@dataclass(frozen=True)
class Item:
    """One image of a dataset.

    Attributes:
        key (str): the image as the user named it (a path relative to the source folder, the table's cell, or
            ``shard.tar/sample``); the ``image`` column of the output.
        path (str): the file to read (absolute).
        captions (tuple of str): the image's own captions (empty when the source has none).
        offset (int): where the image's bytes start inside ``path`` (a tar shard), or -1 for the whole file.
        size (int): the number of bytes at ``offset`` (tar shards), or -1.
    """

    key: str
    path: str
    captions: Tuple[str, ...] = ()
    offset: int = -1
    size: int = -1


def list_source(source: Union[str, Path], *, image_column: Optional[str] = None,
                caption_column: Optional[str] = None) -> List[Item]:
    """Every image of ``source``, in a deterministic order.

    Args:
        source (str or Path): a folder (searched recursively for ``.png``, ``.jpg``, ... files), a ``.csv`` or
            ``.parquet`` file with a column of image paths (relative paths are relative to the table's folder)
            and optionally a column of captions (a string, or a list of strings in Parquet; rows naming the same
            image are merged), or webdataset shards: one uncompressed ``.tar`` file, a glob
            (``shards/*.tar``) or a brace range (``shards/data-{000..009}.tar``). In a shard, the files
            ``KEY.jpg`` (any image suffix) and ``KEY.txt`` form a sample: the image and its caption.
        image_column (str, optional): the table's image column. Default: the first of ``image``,
            ``image_path``, ``path``, ``filepath``, ``file`` that exists.
        caption_column (str, optional): the table's caption column. Default: the first of ``caption``,
            ``captions``, ``text`` that exists, else no captions.

    Returns:
        list of :class:`Item`: never empty.

    Raises:
        SourceError: the source does not exist, holds no image, or a table lacks the named columns.

    Examples::

        >>> items = list_source("photos/")                 # every image below photos/
        >>> items = list_source("captions.parquet")        # columns image, caption
        >>> items = list_source("shards/data-{000..003}.tar")
    """
    text = str(source)
    if _is_tar_pattern(text):
        return _list_tars(text)
    path = Path(text)
    if not path.exists():
        raise SourceError(f"dataset source not found: {path} (give a folder of images, a .csv or .parquet file "
                          "of image paths, or .tar shards)")
    if path.is_dir():
        return _list_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        return _list_table(path, image_column, caption_column)
    raise SourceError(f"unsupported dataset source {path}: expected a folder of images, a .csv or .parquet file "
                      "of image paths, or uncompressed .tar shards")


def read_item(item: Item, max_bytes: int) -> Union[str, bytes]:
    """What :func:`captum_gradeclip.image_io.load_image` should open for ``item``: the path of a plain file, or
    the bytes of a tar member (at most ``max_bytes + 1`` of them, so that the loader reports an oversized file
    without this function reading it whole)."""
    if item.offset < 0:
        return item.path
    with open(item.path, "rb") as f:
        f.seek(item.offset)
        return f.read(min(item.size, max_bytes + 1))


# --------------------------------------------------------------------------------------------------- folders
def _list_folder(folder: Path) -> List[Item]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder} or its subfolders")
    return [Item(key=p.relative_to(folder).as_posix(), path=str(p.resolve())) for p in files]


# ---------------------------------------------------------------------------------------------------- tables
def _list_table(path: Path, image_column: Optional[str], caption_column: Optional[str]) -> List[Item]:
    rows = _read_table(path)
    columns = list(rows)
    image_col = _pick_column(columns, image_column, IMAGE_COLUMNS, path, "image")
    caption_col = _pick_column(columns, caption_column, CAPTION_COLUMNS, path, "caption", required=False)
    images = rows[image_col]
    captions = rows[caption_col] if caption_col else [None] * len(images)
    merged: Dict[str, List[str]] = {}
    for n, (image, cell) in enumerate(zip(images, captions)):
        if image is None or not str(image).strip():
            raise SourceError(f"{path}: row {n + 1} has an empty {image_col!r} cell")
        texts = merged.setdefault(str(image), [])
        for caption in _captions_of(cell):
            if caption not in texts:
                texts.append(caption)
    if not merged:
        raise SourceError(f"{path} has no rows")
    base = path.parent.resolve()
    return [Item(key=key, path=str(base / key) if not Path(key).is_absolute() else key, captions=tuple(texts))
            for key, texts in merged.items()]


def _read_table(path: Path) -> Dict[str, List[Any]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pydict()
        except Exception as err:  # pyarrow raises several types for a bad file
            raise SourceError(f"cannot read Parquet file {path}: {err}") from None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise SourceError(f"{path} is empty: expected a header row naming an image column")
        table: Dict[str, List[Any]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                table[name].append(row.get(name))
    return table


def _pick_column(columns: Sequence[str], given: Optional[str], known: Sequence[str], path: Path, what: str,
                 required: bool = True) -> Optional[str]:
    if given is not None:
        if given not in columns:
            raise SourceError(f"{path} has no column {given!r}; its columns are {list(columns)}")
        return given
    for name in known:
        if name in columns:
            return name
    if required:
        raise SourceError(f"{path} has no {what} column: name it one of {list(known)} or pass its name "
                          f"(its columns are {list(columns)})")
    return None


def _captions_of(cell: Any) -> List[str]:
    if cell is None:
        return []
    values = [cell] if isinstance(cell, str) else list(cell)
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


# ----------------------------------------------------------------------------------------------- tar shards
def _is_tar_pattern(text: str) -> bool:
    return text.lower().endswith(".tar") or text.lower().endswith((".tar.gz", ".tgz"))


def expand_braces(pattern: str) -> List[str]:
    """``data-{000..002}.tar`` -> ``data-000.tar``, ``data-001.tar``, ``data-002.tar`` (zero padding kept);
    several ranges multiply; a pattern without braces is returned as is."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[:match.start()] + str(n).zfill(width) + pattern[match.end():]))
    return out


def _list_tars(pattern: str) -> List[Item]:
    if pattern.lower().endswith((".tar.gz", ".tgz")):
        raise SourceError(f"{pattern}: compressed shards cannot be read image by image; use uncompressed .tar "
                          "shards (webdataset's default)")
    shards: List[str] = []
    for part in expand_braces(pattern):
        found = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        shards.extend(found)
    if not shards:
        raise SourceError(f"no .tar shards match {pattern}")
    items: List[Item] = []
    for shard in shards:
        items.extend(_list_tar(Path(shard)))
    if not items:
        raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the shards {pattern}")
    return items


def _list_tar(shard: Path) -> List[Item]:
    if not shard.is_file():
        raise SourceError(f"tar shard not found: {shard}")
    images: Dict[str, tarfile.TarInfo] = {}
    captions: Dict[str, str] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = name.rsplit("/", 1)[-1]
                if base.startswith("."):
                    continue
                stem = name[:len(name) - len(base)] + base.split(".", 1)[0]  # webdataset: key = up to the first dot
                suffix = "." + base.split(".", 1)[1].lower() if "." in base else ""
                if suffix in IMAGE_SUFFIXES and stem not in images:
                    images[stem] = member
                elif suffix in TAR_CAPTION_SUFFIXES:
                    data = tar.extractfile(member)
                    captions[stem] = data.read().decode("utf-8", errors="replace").strip() if data else ""
    except tarfile.TarError as err:
        raise SourceError(f"cannot read tar shard {shard}: {err}") from None
    where = str(shard.resolve())
    return [Item(key=f"{shard.name}/{stem}", path=where,
                 captions=(captions[stem],) if captions.get(stem) else (),
                 offset=member.offset_data, size=member.size)
            for stem, member in images.items()]
