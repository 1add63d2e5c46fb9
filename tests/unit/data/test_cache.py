"""Tests for covidxray.data.cache: decode once, store on disk by content and size."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

import covidxray.data.cache as cache_module
from covidxray.data.cache import FORMAT_VERSION, INDEX_NAME, ImageCache
from covidxray.data.images import pixel_digest, read_image, resize_square
from helpers import gray, write_image


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Three distinct 32x32 PNGs and one 48x40 PNG that needs resizing."""
    folder = tmp_path / "images"
    paths = [write_image(folder / f"img{i}.png", gray(i, (32, 32))) for i in range(3)]
    paths.append(write_image(folder / "big.png", gray(9, (48, 40))))
    return [str(p) for p in paths]


def _npy_files(root: pathlib.Path, size: int) -> list[pathlib.Path]:
    return sorted((root / FORMAT_VERSION / str(size)).glob("*.npy"))


def test_load_returns_the_right_pixels(tmp_path, images):
    decoded = ImageCache(tmp_path / "cache", workers=2).load(images, 32)
    assert decoded.images.shape == (4, 32, 32)
    assert decoded.images.dtype == np.uint8
    assert decoded.failed == {}
    assert decoded.ok.tolist() == [True] * 4
    for i in range(3):
        np.testing.assert_array_equal(decoded.images[i], gray(i, (32, 32)))
    full = read_image(images[3])
    np.testing.assert_array_equal(decoded.images[3], resize_square(full, 32))
    assert decoded.pixel_digests == [pixel_digest(read_image(p)) for p in images]
    assert len(_npy_files(tmp_path / "cache", 32)) == 4
    assert (tmp_path / "cache" / FORMAT_VERSION / INDEX_NAME).is_file()


def test_second_load_opens_no_image_file(tmp_path, images, monkeypatch):
    cache = ImageCache(tmp_path / "cache")
    first = cache.load(images, 32)

    def no_decoding(path, size, data=None):
        raise AssertionError(f"decode_resized({path}) called on a cached file")

    original_read_bytes = pathlib.Path.read_bytes
    image_paths = {os.path.abspath(p) for p in images}

    def guarded_read_bytes(self):
        if os.path.abspath(self) in image_paths:
            raise AssertionError(f"{self} was opened on a cached load")
        return original_read_bytes(self)

    monkeypatch.setattr(cache_module, "decode_resized", no_decoding)
    monkeypatch.setattr(pathlib.Path, "read_bytes", guarded_read_bytes)

    second = ImageCache(tmp_path / "cache").load(images, 32)  # a new process, say
    np.testing.assert_array_equal(second.images, first.images)
    assert second.pixel_digests == first.pixel_digests
    assert second.failed == {}


def test_changed_file_is_decoded_again(tmp_path, images):
    cache = ImageCache(tmp_path / "cache")
    cache.load(images, 32)
    write_image(pathlib.Path(images[0]), gray(77, (32, 32)))
    stat = os.stat(images[0])
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a visibly newer file
    decoded = cache.load(images, 32)
    np.testing.assert_array_equal(decoded.images[0], gray(77, (32, 32)))


def test_copy_under_another_name_shares_one_entry(tmp_path, images):
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(images[0], copy)
    cache = ImageCache(tmp_path / "cache")
    cache.load(images[:1], 32)
    assert len(_npy_files(tmp_path / "cache", 32)) == 1
    decoded = cache.load([str(copy)], 32)
    assert len(_npy_files(tmp_path / "cache", 32)) == 1
    np.testing.assert_array_equal(decoded.images[0], gray(0, (32, 32)))

    both = ImageCache(tmp_path / "cache2").load([images[0], str(copy)], 32)
    assert len(_npy_files(tmp_path / "cache2", 32)) == 1
    np.testing.assert_array_equal(both.images[0], both.images[1])


def test_other_size_makes_new_entries(tmp_path, images):
    cache = ImageCache(tmp_path / "cache")
    cache.load(images, 32)
    small = cache.load(images, 16)
    assert small.images.shape == (4, 16, 16)
    assert len(_npy_files(tmp_path / "cache", 16)) == 4
    assert len(_npy_files(tmp_path / "cache", 32)) == 4
    np.testing.assert_array_equal(small.images[3], resize_square(read_image(images[3]), 16))


def test_corrupt_file_is_listed_and_the_others_decode(tmp_path, images):
    corrupt = tmp_path / "images" / "corrupt.png"
    data = pathlib.Path(images[0]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    paths = [images[0], str(corrupt), images[1]]
    decoded = ImageCache(tmp_path / "cache").load(paths, 32)
    assert list(decoded.failed) == [str(corrupt)]
    assert str(corrupt) in decoded.failed[str(corrupt)]
    assert decoded.ok.tolist() == [True, False, True]
    assert decoded.pixel_digests[1] is None
    assert (decoded.images[1] == 0).all()
    np.testing.assert_array_equal(decoded.images[0], gray(0, (32, 32)))
    np.testing.assert_array_equal(decoded.images[2], gray(1, (32, 32)))
    assert len(_npy_files(tmp_path / "cache", 32)) == 2


def test_missing_file_is_listed_not_raised(tmp_path, images):
    missing = str(tmp_path / "images" / "gone.png")
    decoded = ImageCache(tmp_path / "cache").load([images[0], missing], 32)
    assert list(decoded.failed) == [missing]
    assert missing in decoded.failed[missing]
    assert decoded.ok.tolist() == [True, False]


def test_a_fifo_or_a_link_to_a_device_is_listed_unread(tmp_path, images):
    """Issue 30: a manifest may name them; reading a FIFO blocks, a link to /dev/zero never ends.
    Run in a thread: the old code blocked on the FIFO."""
    import threading

    os.mkfifo(tmp_path / "images" / "pipe.png")
    (tmp_path / "images" / "device.png").symlink_to("/dev/null")  # refused from its kind, never opened
    special = [str(tmp_path / "images" / "pipe.png"), str(tmp_path / "images" / "device.png")]
    done = []
    worker = threading.Thread(target=lambda: done.append(ImageCache(tmp_path / "cache", workers=1).load(
        [*special, images[0]], 32)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if not done:  # blocked reading the FIFO: let it go, then fail
        try:
            os.close(os.open(special[0], os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        worker.join(timeout=20)
        pytest.fail("the cache blocked on a FIFO")
    decoded = done[0]
    assert decoded.ok.tolist() == [False, False, True]
    assert "not a regular file (a FIFO (named pipe)); not read" in decoded.failed[special[0]]
    assert "not a regular file (a device); not read" in decoded.failed[special[1]]


def test_no_temporary_files_are_left(tmp_path, images):
    cache_root = tmp_path / "cache"
    corrupt = tmp_path / "images" / "bad.png"
    corrupt.write_text("not a png")
    ImageCache(cache_root).load([*images, str(corrupt)], 32)
    ImageCache(cache_root).load(images, 24)
    everything = [p for p in cache_root.rglob("*") if p.is_file()]
    assert everything, "the cache wrote nothing"
    leftovers = [p for p in everything if p.name.startswith(".") or p.suffix not in (".npy", ".json")]
    assert leftovers == []
    assert {p.name for p in everything if p.suffix == ".json"} == {INDEX_NAME}


def test_corrupt_index_is_rebuilt(tmp_path, images):
    cache_root = tmp_path / "cache"
    (cache_root / FORMAT_VERSION).mkdir(parents=True)
    (cache_root / FORMAT_VERSION / INDEX_NAME).write_text("{not json")
    decoded = ImageCache(cache_root).load(images, 32)
    assert decoded.failed == {}
    np.testing.assert_array_equal(decoded.images[1], gray(1, (32, 32)))


@pytest.mark.parametrize("damage", [
    lambda npy, size: npy.write_bytes(npy.read_bytes()[:100]),  # cut short (a full disk, a killed copy)
    lambda npy, size: npy.write_bytes(b"garbage"),
    lambda npy, size: np.save(npy, np.zeros((size + 1, size), np.uint8)),  # another shape
    lambda npy, size: np.save(npy, np.zeros((size, size), np.float64)),
    lambda npy, size: np.save(npy, np.array([{"x": 1}], dtype=object), allow_pickle=True),  # never unpickled
], ids=["truncated", "garbage", "shape", "dtype", "pickle"])
def test_a_corrupt_cached_image_is_decoded_again_with_a_warning(tmp_path, images, damage, caplog):
    cache_root = tmp_path / "cache"
    ImageCache(cache_root).load(images, 32)
    npy = ImageCache(cache_root)._array_path(_sha(images[1]), 32)
    damage(npy, 32)
    with caplog.at_level("WARNING", logger="covidxray"):
        for _ in range(2):  # every later command on that image works: the first one repairs the entry
            decoded = ImageCache(cache_root).load(images, 32)
            assert decoded.failed == {}
            np.testing.assert_array_equal(decoded.images[1], gray(1, (32, 32)))
    assert caplog.text.count("corrupt cached image of") == 1 and f"{npy}: corrupt cached image of {images[1]}" in caplog.text
    assert "decoding the image again" in caplog.text


@pytest.mark.parametrize("index", ["[]", '"x"', "{not json", b"\xff\xfe\x00", None])
def test_an_index_that_is_not_one_is_rebuilt_with_a_warning(tmp_path, images, index, caplog):
    cache_root = tmp_path / "cache"
    ImageCache(cache_root).load(images, 32)
    path = cache_root / FORMAT_VERSION / INDEX_NAME
    if index is None:  # entries that are not entries: a sha256 that would lead out of the cache, a list, no pixels
        entries = list(json.loads(path.read_text()))
        path.write_text(json.dumps({entries[0]: {"sha256": "../../../../etc/x", "pixels": "p"},
                                                  entries[1]: ["x"], entries[2]: {"sha256": _sha(images[2])}}))
    else:
        path.write_bytes(index if isinstance(index, bytes) else index.encode())
    with caplog.at_level("WARNING", logger="covidxray"):
        decoded = ImageCache(cache_root).load(images, 32)
    assert decoded.failed == {} and decoded.ok.all()
    for i in range(3):
        np.testing.assert_array_equal(decoded.images[i], gray(i, (32, 32)))
    assert ("a bad entry for" in caplog.text) if index is None else ("not a covidxray cache index" in caplog.text)
    caplog.clear()
    ImageCache(cache_root).load(images, 32)  # repaired
    assert caplog.text == ""


def _sha(path: str) -> str:
    import hashlib

    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
