"""Dataset sources: folders, CSV / Parquet tables, webdataset tar shards (no Ray needed)."""

import io
import tarfile

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from captum_gradeclip.image_io import load_image  # noqa: E402
from captum_gradeclip.scale.sources import SourceError, expand_braces, list_source, read_item  # noqa: E402

from fixtures import write_scenes  # noqa: E402


def test_folder_is_searched_recursively_in_sorted_order(tmp_path):
    write_scenes(tmp_path, 4)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.png").write_bytes(b"hidden")
    items = list_source(tmp_path)
    assert [it.key for it in items] == ["scene000.jpg", "scene002.jpg", "sub/scene001.png", "sub/scene003.png"]
    assert all(it.captions == () and it.offset == -1 for it in items)
    assert list_source(tmp_path) == items  # deterministic


def test_csv_relative_paths_merged_captions(tmp_path):
    write_scenes(tmp_path / "img", 2, nested=False)
    (tmp_path / "list.csv").write_text("image,caption\n"
                                       "img/scene000.jpg,a red circle\n"
                                       "img/scene001.png,\n"
                                       "img/scene000.jpg,a blue square\n"
                                       "img/scene000.jpg,a red circle\n", encoding="utf-8")
    items = list_source(tmp_path / "list.csv")
    assert [(it.key, it.captions) for it in items] == [("img/scene000.jpg", ("a red circle", "a blue square")),
                                                       ("img/scene001.png", ())]
    assert items[0].path == str((tmp_path / "img" / "scene000.jpg").resolve())


def test_parquet_list_captions_and_named_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = write_scenes(tmp_path, 2, nested=False)
    pq.write_table(pa.table({"file_name": [str(p) for p in paths],
                             "alt": [["a red circle", "a green triangle"], None]}), tmp_path / "t.parquet")
    items = list_source(tmp_path / "t.parquet", image_column="file_name", caption_column="alt")
    assert [it.captions for it in items] == [("a red circle", "a green triangle"), ()]
    assert items[0].key == str(paths[0])  # absolute paths kept as given
    with pytest.raises(SourceError, match="no image column"):
        list_source(tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="no column 'nope'"):
        list_source(tmp_path / "t.parquet", image_column="file_name", caption_column="nope")


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_shards_with_braces_read_the_same_pixels(tmp_path):
    paths = write_scenes(tmp_path / "img", 3, nested=False)
    _shard(tmp_path / "data-000.tar", [("a/x1.jpg", paths[0].read_bytes()), ("a/x1.txt", b"a red circle\n"),
                                       ("a/x2.png", paths[1].read_bytes())])
    _shard(tmp_path / "data-001.tar", [("y.jpg", paths[2].read_bytes())])
    items = list_source(str(tmp_path / "data-{000..001}.tar"))
    assert [(it.key, it.captions) for it in items] == [("data-000.tar/a/x1", ("a red circle",)),
                                                       ("data-000.tar/a/x2", ()), ("data-001.tar/y", ())]
    for item, path in zip(items, paths):
        assert np.array_equal(np.asarray(load_image(read_item(item, 10 ** 6))), np.asarray(load_image(path)))
    assert [it.key for it in list_source(str(tmp_path / "data-*.tar"))] == [it.key for it in items]
    # an oversized member is read only up to the limit, so the loader can refuse it
    assert len(read_item(items[0], 100)) == 101


def test_expand_braces():
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("{1..2}/{0..1}.tar") == ["1/0.tar", "1/1.tar", "2/0.tar", "2/1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def _file(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "not found"),
    (lambda d: d, "no images"),
    (lambda d: _file(d / "x.json", "{}"), "unsupported dataset source"),
    (lambda d: d / "s.tar.gz", "compressed"),
    (lambda d: d / "none-{0..1}.tar", "tar shard not found"),
    (lambda d: _file(d / "e.csv", ""), "header row"),
])
def test_bad_sources_are_named(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        list_source(make(tmp_path))
