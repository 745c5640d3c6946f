"""Image-caption data for fine-tuning: the shapes world, or a user's folder, CSV or Parquet file.

Every dataset maps an index to ``(image, caption)``: a ``(3, S, S)`` float image in ``[0, 1]`` (resized so the
shorter side is ``S`` and centre-cropped, as CLIP's preprocessing does) and a non-empty caption string.

- :class:`ShapesCaptions`: scene ``i`` of the synthetic shapes world, generated from its own seed, described
  with every object (:func:`~captum_gradeclip.data.describe_scene`).
- :class:`CaptionTable`: a user's rows of ``(image path, caption)`` from a CSV file (columns ``image`` and
  ``caption``), a Parquet file (same columns) or a folder (each image with a ``.txt`` file of the same stem).
  Every row is checked when the table is opened (image file present, caption not empty): a bad row raises
  :class:`DataRowError` naming the file, the row and what is wrong, before any training starts. Images are read
  with the library's guarded loader (:func:`captum_gradeclip.image_io.load_image`: size and pixel limits,
  supported formats, truncated files); one it refuses is reported the same way when it is read.

:class:`StepBatches` decides which rows each step and rank get: one seeded permutation of the rows per epoch,
cut into global batches, each global batch cut into one contiguous slice per rank (what ``DistributedSampler``
does with ``drop_last``). Step ``s`` always gets the same rows, whatever the number of ranks and wherever a run
was resumed.

Examples:
    >>> data = ShapesCaptions(100, image_size=64, seed=0)
    >>> image, caption = data[3]
    >>> image.shape, isinstance(caption, str)
    (torch.Size([3, 64, 64]), True)
    >>> StepBatches(len(data), global_batch=8, seed=0, rank=1, world_size=2).indices(0)
    [71, 69, 37, 95]
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..data.scene_descriptions import CAPTION_STYLES, describe_scene
from ..data.shapes import ShapesBatch, generate_scenes
from ..image_io import IMAGE_SUFFIXES

__all__ = ["DataRowError", "ShapesCaptions", "CaptionTable", "StepBatches", "open_caption_data", "collate"]


class DataRowError(ValueError):
    """A bad data row: missing or unreadable image, empty caption. The message names the file and the row."""


class ShapesCaptions(torch.utils.data.Dataset):
    """Scenes of the shapes world with captions naming every object.

    Scene ``i`` is ``generate_scenes(1, seed=seed * 1_000_003 + i, ...)``: any scene can be produced alone, in
    any order, on any rank.

    Args:
        size: number of scenes.
        image_size: image side in pixels. Default: 64
        seed: dataset seed (held-out data uses another seed). Default: 0
        num_objects: objects per scene, an int or an inclusive range. Default: (1, 4)
        style: caption style of :func:`~captum_gradeclip.data.describe_scene`. Default: "list"
    """

    def __init__(self, size: int, image_size: int = 64, seed: int = 0,
                 num_objects: Union[int, Tuple[int, int]] = (1, 4), style: str = "list") -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if style not in CAPTION_STYLES:
            raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")
        self.size, self.image_size, self.seed = size, image_size, seed
        self.num_objects, self.style = num_objects, style

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> ShapesBatch:
        """The scene of ``index`` with its masks and labels (a one-scene ShapesBatch)."""
        if not 0 <= index < self.size:
            raise IndexError(f"scene {index} is out of range for {self.size} scenes")
        return generate_scenes(1, image_size=self.image_size, num_objects=self.num_objects,
                               seed=self.seed * 1_000_003 + index)

    def __getitem__(self, index: int) -> Tuple[Tensor, str]:
        scene = self.scene(index)
        return scene.images[0], describe_scene(scene, 0, self.style)

    def describe(self) -> dict:
        """A JSON description of this data."""
        return {"kind": "shapes", "size": self.size, "image_size": self.image_size, "seed": self.seed,
                "num_objects": self.num_objects, "style": self.style}


def _load_image(path: Path, size: int, where: str) -> Tensor:
    from ..loading import prepare_image
    from ..image_io import ImageLoadError, load_image

    try:
        rgb = load_image(path)  # the library's guarded loader: size and pixel limits, formats, truncation
    except ImageLoadError as err:
        raise DataRowError(f"{where}: {err}") from None
    return prepare_image(rgb, size, None, "model")


class CaptionTable(torch.utils.data.Dataset):
    """A user's image-caption rows from a CSV file, a Parquet file or a folder.

    - CSV: a header with the columns ``image`` and ``caption`` (others are ignored); rows are numbered as
      lines of the file (the header is line 1).
    - Parquet: the columns ``image`` and ``caption`` (read with pyarrow); rows are numbered from 0.
    - Folder: every image file (``.png``, ``.jpg``, ...) with a ``.txt`` file of the same stem holding its
      caption; images without a caption file are bad rows.

    Relative image paths are resolved against the CSV/Parquet file's folder.

    Args:
        source: the CSV/Parquet file or the folder.
        image_size: side ``S`` of the returned images (shorter side resized to ``S``, centre crop).

    Raises:
        DataRowError: For the first bad row (missing image, empty caption), naming the file and the row.
        ValueError: For an unknown file type, missing columns or no rows at all.
    """

    def __init__(self, source: Union[str, Path], image_size: int) -> None:
        self.source = Path(source)
        self.image_size = int(image_size)
        rows = self._read_rows()
        if not rows:
            raise ValueError(f"{self.source} has no image-caption rows")
        for where, path, cap in rows:
            if not isinstance(cap, str) or not cap.strip():
                raise DataRowError(f"{where}: empty caption for image {path}")
            if not path.is_file():
                raise DataRowError(f"{where}: image not found: {path}")
        self.rows: List[Tuple[str, Path, str]] = [(w, p, c.strip()) for w, p, c in rows]

    def _read_rows(self) -> List[Tuple[str, Path, str]]:
        src = self.source
        if src.is_dir():
            out = []
            for p in sorted(src.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    txt = p.with_suffix(".txt")
                    cap = txt.read_text(encoding="utf-8") if txt.is_file() else ""
                    out.append((f"{src} (image {p.name}, caption file {txt.name})", p, cap))
            return out
        if not src.is_file():
            raise FileNotFoundError(f"caption data not found: {src}")
        suffix = src.suffix.lower()
        if suffix == ".csv":
            with open(src, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self._check_columns(reader.fieldnames or [])
                return [(f"{src} line {reader.line_num}", self._resolve(r["image"]), r["caption"] or "")
                        for r in reader]
        if suffix in (".parquet", ".pq"):
            try:
                import pyarrow.parquet as pq
            except ImportError:  # pragma: no cover - depends on the environment
                raise ImportError("reading Parquet needs pyarrow: pip install 'captum-gradeclip[finetune]'") from None

            table = pq.read_table(src)
            self._check_columns(table.column_names)
            images = table.column("image").to_pylist()
            caps = table.column("caption").to_pylist()
            return [(f"{src} row {i}", self._resolve(im or ""), cap or "") for i, (im, cap) in
                    enumerate(zip(images, caps))]
        raise ValueError(f"unsupported caption data {src}: expected a folder, a .csv or a .parquet file")

    def _check_columns(self, names: Sequence[str]) -> None:
        missing = [c for c in ("image", "caption") if c not in names]
        if missing:
            raise ValueError(f"{self.source} lacks the column(s) {missing}; found {list(names)}")

    def _resolve(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.source.parent / p

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[Tensor, str]:
        where, path, cap = self.rows[index]
        return _load_image(path, self.image_size, where), cap

    def describe(self) -> dict:
        """A JSON description of this data."""
        return {"kind": "table", "source": str(self.source), "rows": len(self.rows), "image_size": self.image_size}


def open_caption_data(spec: str, image_size: int, *, size: int = 100_000, seed: int = 0
                      ) -> Union[ShapesCaptions, CaptionTable]:
    """The dataset named on the command line: ``"shapes"`` or a folder / CSV / Parquet path.

    Args:
        spec: ``"shapes"`` (optionally ``"shapes:<style>"``) or a path.
        image_size: image side of the model.
        size: number of shapes scenes. Default: 100,000
        seed: shapes dataset seed. Default: 0

    Returns:
        The dataset.
    """
    if spec == "shapes" or spec.startswith("shapes:"):
        style = spec.split(":", 1)[1] if ":" in spec else "list"
        return ShapesCaptions(size, image_size=image_size, seed=seed, style=style)
    return CaptionTable(spec, image_size)


class StepBatches(torch.utils.data.Sampler):
    """Which rows each optimisation step gets on this rank, addressable by step.

    Epoch ``e`` visits the rows in the order ``torch.randperm(n)`` drawn from a generator seeded with
    ``seed + e``; its first ``n // global_batch`` full global batches are used (the rest dropped); rank ``r`` of
    ``W`` takes rows ``r * B / W .. (r + 1) * B / W`` of each global batch. Iterating yields the local index
    lists of steps ``start, start + 1, ..., stop - 1`` (a batch sampler for ``DataLoader``).

    Args:
        n: number of rows.
        global_batch: rows per step over all ranks (a multiple of ``world_size``, at most ``n``).
        seed: shuffling seed.
        rank: this process's rank.
        world_size: number of ranks.
        start: first step. Default: 0
        stop: end step (exclusive). Default: None (endless)
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 stop: Optional[int] = None) -> None:
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"the global batch {global_batch} must be a positive multiple of the number of ranks "
                             f"{world_size}")
        if global_batch > n:
            raise ValueError(f"the global batch {global_batch} is larger than the data ({n} rows)")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.start, self.stop = rank, world_size, start, stop
        self.per_epoch = n // global_batch
        self._epoch: Optional[int] = None
        self._perm: Optional[Tensor] = None

    def indices(self, step: int) -> List[int]:
        """The local row indices of ``step`` on this rank."""
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        local = self.global_batch // self.world_size
        lo = j * self.global_batch + self.rank * local
        return self._perm[lo:lo + local].tolist()  # type: ignore[index]

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start
        while self.stop is None or step < self.stop:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless StepBatches has no length")
        return max(0, self.stop - self.start)


def collate(items: Sequence[Tuple[Tensor, str]]) -> Tuple[Tensor, List[str]]:
    """Stack images and list captions."""
    return torch.stack([im for im, _ in items]), [c for _, c in items]


