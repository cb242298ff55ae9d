import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jmvae.model.preprocess import Preprocessing, crop_face, open_image
from jmvae.training import celeba
from jmvae.training.celeba import CelebAFormatError, load_celeba, read_celeba
from jmvae.training.data import CELEBA_ATTRIBUTES, FaceDataset

NAMES = [f"{i:06d}.jpg" for i in range(1, 13)]
PARTITION = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0]  # train and val interleaved; no test rows at all
WRITTEN = NAMES[::-1]  # list_attr rows out of filename order, so the cache has to sort them
PREP = Preprocessing(image_size=16)


def _attributes() -> np.ndarray:
    return np.where(np.random.default_rng(7).random((len(NAMES), 40)) < 0.3, 1, -1).astype(np.int8)


def _attr_text(columns: tuple[str, ...] = CELEBA_ATTRIBUTES, eol: str = "\r\n", trailing: str = "") -> str:
    """list_attr_celeba.txt as the original writes it: names line with a trailing space, 1s padded to -1's width."""
    attributes = _attributes()
    order = [CELEBA_ATTRIBUTES.index(c) for c in columns]
    rows = [name + " " + " ".join(f"{v:>2}" for v in attributes[NAMES.index(name)][order]) for name in WRITTEN]
    return eol.join([str(len(rows)), " ".join(columns) + " ", *rows]) + eol + trailing


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        image = Image.new("RGB", (178, 218), (20 * i, 255 - 20 * i, 128))
        draw = ImageDraw.Draw(image)
        draw.ellipse((40 + i, 60, 140, 190), fill=(230, 180 - 10 * i, 150))
        draw.rectangle((70, 100, 80 + i, 110), fill=(0, 0, 0))
        image.save(root / "img_align_celeba" / name, quality=95)
    _write(root / "list_attr_celeba.txt", _attr_text())
    _write(root / "list_eval_partition.txt", "".join(f"{n} {p}\r\n" for n, p in zip(NAMES, PARTITION)))
    _write(root / "identity_CelebA.txt", "".join(f"{n} {100 + i % 3}\r\n" for i, n in enumerate(NAMES)))
    return root


def _edit_line(path: Path, line: int, edit: Callable[[str], str]) -> None:
    lines = path.read_bytes().decode().split("\r\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_bytes("\r\n".join(lines).encode())


def _load(root: Path, cache: Path, preprocessing: Preprocessing = PREP, workers: int | None = None) -> FaceDataset:
    return load_celeba(root, preprocessing, cache, workers=workers, progress=False)


def test_read_parses_crlf_padded_columns(root: Path) -> None:
    assert b"\r\n" in (root / "list_attr_celeba.txt").read_bytes()
    assert b"  1" in (root / "list_attr_celeba.txt").read_bytes()
    index = read_celeba(root)
    assert index.filenames == tuple(WRITTEN)
    assert index.attribute_names == CELEBA_ATTRIBUTES
    rows = [NAMES.index(n) for n in WRITTEN]
    np.testing.assert_array_equal(index.attributes, _attributes()[rows])
    assert index.attributes.dtype == np.int8
    assert index.partition.tolist() == [PARTITION[r] for r in rows]
    assert index.identities is not None and index.identities.tolist() == [100 + r % 3 for r in rows]


def test_read_lf_with_trailing_blank_line_and_no_identity_file(root: Path) -> None:
    _write(root / "list_attr_celeba.txt", _attr_text(eol="\n", trailing="\n"))
    (root / "identity_CelebA.txt").unlink()
    index = read_celeba(root)
    np.testing.assert_array_equal(index.attributes, _attributes()[[NAMES.index(n) for n in WRITTEN]])
    assert index.identities is None


def test_reordered_attribute_columns_are_put_back_in_celeba_order(root: Path) -> None:
    columns = tuple(reversed(CELEBA_ATTRIBUTES[:10])) + CELEBA_ATTRIBUTES[10:]
    _write(root / "list_attr_celeba.txt", _attr_text(columns))
    index = read_celeba(root)
    assert index.attribute_names == CELEBA_ATTRIBUTES
    np.testing.assert_array_equal(index.attributes, _attributes()[[NAMES.index(n) for n in WRITTEN]])


ATTR, PART, IDENT = "list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"


def _replace_token(index: int, value: str) -> Callable[[str], str]:
    def edit(line: str) -> str:
        parts = line.split()
        parts[index] = value
        return " ".join(parts)

    return edit


# (what to break, file, line the message must name)
FORMAT_ERRORS: dict[str, tuple[Callable[[Path], None], str, int]] = {
    "count not an integer": (lambda r: _edit_line(r / ATTR, 1, lambda _: "twelve"), ATTR, 1),
    "count mismatch": (lambda r: _edit_line(r / ATTR, 1, lambda _: "13"), ATTR, 1),
    "unknown attribute name": (lambda r: _edit_line(r / ATTR, 2, lambda s: s.replace("Smiling", "Grinning")), ATTR, 2),
    "missing attribute name": (lambda r: _edit_line(r / ATTR, 2, lambda s: s.replace("Young", "")), ATTR, 2),
    "too few values": (lambda r: _edit_line(r / ATTR, 5, lambda s: s.rsplit(" ", 1)[0]), ATTR, 5),
    "too many values": (lambda r: _edit_line(r / ATTR, 7, lambda s: s + " 1"), ATTR, 7),
    "value not -1/1": (lambda r: _edit_line(r / ATTR, 9, _replace_token(12, "0")), ATTR, 9),
    "duplicate file name": (lambda r: _edit_line(r / ATTR, 10, _replace_token(0, WRITTEN[1])), ATTR, 10),
    "path as file name": (lambda r: _edit_line(r / ATTR, 4, _replace_token(0, "../x.jpg")), ATTR, 4),
    "partition not 0/1/2": (lambda r: _edit_line(r / PART, 3, _replace_token(1, "3")), PART, 3),
    "partition row malformed": (lambda r: _edit_line(r / PART, 6, lambda s: s + " 0"), PART, 6),
    "partition duplicate": (lambda r: _edit_line(r / PART, 4, _replace_token(0, NAMES[0])), PART, 4),
    "identity not an integer": (lambda r: _edit_line(r / IDENT, 2, _replace_token(1, "x7")), IDENT, 2),
}


@pytest.mark.parametrize("case", FORMAT_ERRORS)
def test_format_errors_name_file_and_line(root: Path, case: str) -> None:
    damage, filename, line = FORMAT_ERRORS[case]
    damage(root)
    with pytest.raises(CelebAFormatError) as caught:
        read_celeba(root)
    assert f"{root / filename}:{line}: " in str(caught.value)
    assert caught.value.line == line


@pytest.mark.parametrize("remove", ["", ATTR, PART, "img_align_celeba", "img_align_celeba/000005.jpg"])
def test_missing_paths_raise_file_not_found_naming_them(root: Path, remove: str) -> None:
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError) as caught:
        read_celeba(root)
    assert str(caught.value).startswith(f"{target}: ")
    if remove.endswith(".jpg"):  # also says where it was listed
        assert f"{root / ATTR}:{3 + WRITTEN.index('000005.jpg')} " in str(caught.value)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("damage", [b"not a jpeg at all", "truncate"])
def test_corrupt_image_is_named_and_leaves_no_cache(root: Path, tmp_path: Path, workers: int, damage: object) -> None:
    bad = root / "img_align_celeba" / NAMES[4]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)  # type: ignore[arg-type]
    cache = tmp_path / "cache"
    with pytest.raises(CelebAFormatError) as caught:
        _load(root, cache, workers=workers)
    assert str(bad) in str(caught.value)
    assert [p.suffix for p in cache.iterdir()] == [".lock"]  # neither the finished files nor a temp file


def test_image_without_partition_row_is_left_out_with_a_warning(root: Path, tmp_path: Path) -> None:
    # Drop 000001.jpg's partition row and add a row for an image list_attr does not have (ignored).
    text = (root / PART).read_text().replace(f"{NAMES[0]} 1\n", "") + "999999.jpg 0\n"
    _write(root / PART, text)
    assert read_celeba(root).partition[WRITTEN.index(NAMES[0])] == -1
    with pytest.warns(UserWarning, match=NAMES[0]):
        dataset = _load(root, tmp_path / "cache")
    assert {s: len(a) for s, a in dataset.splits.items()} == {"train": 8, "val": 3, "test": 0}


def _expected_split(root: Path, partition: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    names = sorted(n for n, p in zip(NAMES, PARTITION) if p == partition)
    images = [crop_face(open_image(root / "img_align_celeba" / n), PREP.aligned_box, size) for n in names]
    return np.stack(images), _attributes()[[NAMES.index(n) for n in names]]


def test_cache_splits_are_read_only_views_in_partition_filename_order(root: Path, tmp_path: Path) -> None:
    dataset = _load(root, tmp_path / "cache", workers=1)
    assert dataset.attribute_names == CELEBA_ATTRIBUTES and dataset.name == str(root)
    for partition, split in enumerate(("train", "val")):
        images, attributes = _expected_split(root, partition, 16)
        np.testing.assert_array_equal(dataset.splits[split].images, images)
        np.testing.assert_array_equal(dataset.splits[split].attributes, attributes)
        assert isinstance(dataset.splits[split].images, np.memmap)
        assert not dataset.splits[split].images.flags.writeable
    assert len(dataset.splits["test"]) == 0 and dataset.splits["test"].images.shape == (0, 16, 16, 3)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [f"celeba-{dataset.content_key}.{end}" for end in ("images.npy", "lock", "meta.npz")]


def test_pool_build_matches_single_process_build(root: Path, tmp_path: Path) -> None:
    one = _load(root, tmp_path / "one", workers=1)
    two = _load(root, tmp_path / "two", workers=2)
    assert one.content_key == two.content_key
    for split in ("train", "val"):
        np.testing.assert_array_equal(one.splits[split].images, two.splits[split].images)


def test_second_load_reuses_cache_without_decoding(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _load(root, tmp_path / "cache", workers=1)
    train = np.array(first.splits["train"].images)
    # Same size, so the key is unchanged, but any decode would now fail.
    image = root / "img_align_celeba" / NAMES[1]
    image.write_bytes(b"\0" * image.stat().st_size)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded an image on a cache hit")

    monkeypatch.setattr(celeba, "_preprocess_image", no_decoding)
    second = _load(root, tmp_path / "cache", workers=1)
    assert second.content_key == first.content_key
    np.testing.assert_array_equal(second.splits["train"].images, train)


def test_key_changes_with_annotations_images_and_preprocessing(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    loaded = _load(root, cache)
    base, before = loaded.content_key, {name: np.array(split.attributes) for name, split in loaded.splits.items()}
    assert _load(root, cache, preprocessing=Preprocessing(image_size=8)).content_key != base

    first = _attributes()[NAMES.index(WRITTEN[0])]  # line 3 of list_attr
    _edit_line(root / ATTR, 3, _replace_token(1, str(-first[0])))
    flipped = _load(root, cache)
    assert flipped.content_key != base
    # Exactly that one value changes, in that image's row: its place among the train images in filename order.
    row = [name for name, part in zip(NAMES, PARTITION) if part == 0].index(WRITTEN[0])
    np.testing.assert_array_equal(before["train"][row], first)
    expected = before["train"].copy()
    expected[row, 0] = -first[0]
    np.testing.assert_array_equal(flipped.splits["train"].attributes, expected)
    np.testing.assert_array_equal(flipped.splits["val"].attributes, before["val"])

    with open(root / "img_align_celeba" / NAMES[3], "ab") as file:
        file.write(b"\0")  # a different size: a re-encoded or replaced image
    assert _load(root, cache).content_key not in (base, flipped.content_key)
    assert len(list(cache.glob("*.images.npy"))) == 4 and not list(cache.glob(".*"))


def test_other_image_sizes_use_the_scaled_aligned_box(root: Path, tmp_path: Path) -> None:
    for name in NAMES:
        path = root / "img_align_celeba" / name
        Image.open(path).resize((89, 109)).save(path, quality=95)
    dataset = _load(root, tmp_path / "cache")
    first_train = sorted(n for n, p in zip(NAMES, PARTITION) if p == 0)[0]
    image = open_image(root / "img_align_celeba" / first_train)
    expected = crop_face(image, PREP.aligned_box_for(89, 109), 16)
    np.testing.assert_array_equal(dataset.splits["train"].images[0], expected)
    assert not np.array_equal(expected, crop_face(image, PREP.aligned_box, 16))


def test_stale_temp_of_a_dead_builder_is_removed(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = cache / f".celeba-0.images.npy.{host}.{dead.pid}.tmp"
    live = cache / f".celeba-0.images.npy.{host}.{os.getpid()}.tmp"
    foreign = cache / f".celeba-0.images.npy.other-{host}.{dead.pid}.tmp"
    for path in (stale, live, foreign):
        path.write_bytes(b"half-built")
    _load(root, cache)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_progress_bar_only_when_asked(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_celeba(root, PREP, tmp_path / "quiet", workers=1, progress=False)
    assert "preprocessing CelebA" not in capsys.readouterr().err
    load_celeba(root, PREP, tmp_path / "loud", workers=1, progress=True)
    assert "preprocessing CelebA" in capsys.readouterr().err


def _arrays(dataset: FaceDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Copies of every split, so they outlive (and never map) a cache file a test then damages."""
    return {name: (np.array(split.images), np.array(split.attributes)) for name, split in dataset.splits.items()}


def _count_builds(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[int]:
    builds: list[int] = []
    build = celeba._build_cache

    def counted(*args: object, **kwargs: object) -> None:
        builds.append(1)
        time.sleep(delay)  # holds the lock long enough for a concurrent loader to arrive and wait
        build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(celeba, "_build_cache", counted)
    return builds


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_meta(path: Path, drop: str = "", **changes: np.ndarray) -> None:
    with np.load(path) as meta:
        arrays = {k: v for k, v in meta.items() if k != drop} | changes
    np.savez(path, **arrays)  # type: ignore[arg-type]


IMAGES_BYTES = 128 + 12 * 16 * 16 * 3  # 9,344: the .npy header and 12 rows of 16x16 RGB
# (damage done to images file i and meta file m, the notice it must give)
CACHE_DAMAGE: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "images truncated": (lambda i, m: os.truncate(i, 4000), r"images\.npy: 4,000 bytes, expected 9,344; rebuilding"),
    "images one byte longer": (
        lambda i, m: i.write_bytes(i.read_bytes() + b"\0"),
        r"images\.npy: 9,345 bytes, expected 9,344; rebuilding",
    ),
    "images empty (killed before the header)": (lambda i, m: os.truncate(i, 0), r"images\.npy: not a readable \.npy"),
    "images byte flipped": (lambda i, m: _flip_byte(i, 5000), r"images\.npy: sha256 differs from the one in celeba-"),
    "images header of another shape": (
        lambda i, m: np.save(i, np.zeros((12, 8, 8, 3), np.uint8)),
        r"images\.npy: holds uint8 \(12, 8, 8, 3\), expected uint8 \(12, 16, 16, 3\)",
    ),
    "images missing": (lambda i, m: i.unlink(), r"images\.npy: missing; rebuilding"),
    "meta missing": (lambda i, m: m.unlink(), r"meta\.npz: missing; rebuilding"),
    "meta truncated": (lambda i, m: os.truncate(m, m.stat().st_size // 2), r"meta\.npz: unreadable \(BadZipFile"),
    "meta garbage": (lambda i, m: m.write_bytes(b"\x93NUMPY garbage"), r"meta\.npz: unreadable"),
    "meta byte flipped": (lambda i, m: _flip_byte(m, 200), r"meta\.npz: unreadable"),
    "meta of another format version": (
        lambda i, m: _rewrite_meta(m, format_version=np.array(1)),
        r"meta\.npz: format version 1, expected 2; rebuilding",
    ),
    "meta without a checksum (version 1 layout)": (
        lambda i, m: _rewrite_meta(m, drop="images_sha256"),
        r"meta\.npz: holds \[.*\], expected \[.*'images_sha256'.*\]; rebuilding",
    ),
    "meta of other annotations": (
        lambda i, m: _rewrite_meta(m, partition=np.zeros(12, np.int8)),
        r"meta\.npz: does not describe these annotations; rebuilding",
    ),
}


@pytest.mark.parametrize("case", CACHE_DAMAGE)
def test_damaged_cache_is_rebuilt_with_a_notice(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    cache = tmp_path / "cache"
    first = _load(root, cache, workers=1)
    fresh, key = _arrays(first), first.content_key
    del first  # drop the mapping: the damage below changes the file under it
    images, meta = cache / f"celeba-{key}.images.npy", cache / f"celeba-{key}.meta.npz"
    assert images.stat().st_size == IMAGES_BYTES
    damage, notice = CACHE_DAMAGE[case]
    damage(images, meta)
    builds = _count_builds(monkeypatch)

    with pytest.warns(UserWarning) as caught:
        healed = _load(root, cache, workers=1)
    assert [str(w.message) for w in caught if re.search(notice, str(w.message))], [str(w.message) for w in caught]
    assert builds == [1] and healed.content_key == key
    assert _arrays(healed).keys() == fresh.keys()
    for split, (images_array, attributes) in _arrays(healed).items():
        np.testing.assert_array_equal(images_array, fresh[split][0])
        np.testing.assert_array_equal(attributes, fresh[split][1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed for good: the next load is silent and builds nothing
        _load(root, cache, workers=1)
    assert builds == [1] and not list(cache.glob(".*"))


def test_concurrent_builders_share_one_build(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # flock locks belong to an open file description, so two threads each opening the lock file exclude each
    # other as two processes would.
    cache = tmp_path / "cache"
    builds = _count_builds(monkeypatch, delay=0.5)
    start = threading.Barrier(2)
    results: list[FaceDataset | BaseException] = []

    def builder() -> None:
        start.wait()
        try:
            results.append(_load(root, cache, workers=1))
        except BaseException as error:  # reported by the assertion below, not lost in the thread
            results.append(error)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=builder) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(isinstance(r, FaceDataset) for r in results), results
    assert builds == [1]
    assert [str(w.message) for w in caught] == [
        f"{cache}/celeba-{results[0].content_key}.lock: another run is building or checking this cache; waiting for it"
    ]  # type: ignore[union-attr]
    one, two = (_arrays(r) for r in results)  # type: ignore[arg-type]
    for partition, split in enumerate(("train", "val")):
        expected_images, expected_attributes = _expected_split(root, partition, 16)
        for arrays in (one, two):
            np.testing.assert_array_equal(arrays[split][0], expected_images)
            np.testing.assert_array_equal(arrays[split][1], expected_attributes)


def test_read_only_cache_dir_with_a_valid_cache_still_loads(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    built = _arrays(_load(root, cache, workers=1))
    for lock in cache.glob("*.lock"):
        lock.unlink()

    def read_only(path: Path, *args: object, **kwargs: object) -> object:
        if str(path).endswith(".lock"):  # what open() of a new file says in a read-only dir (chmod is moot as root)
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(celeba, "open", read_only, raising=False)
    loaded = _arrays(_load(root, cache, workers=1))
    np.testing.assert_array_equal(loaded["train"][0], built["train"][0])
    assert not list(cache.glob("*.lock"))


def test_cache_holds_the_services_crop_of_an_upload_of_each_file(root: Path, tmp_path: Path) -> None:
    # One function from photo to model input: what training sees of a file is, pixel for pixel, what the service
    # crops from an upload of the same file, a detected face (grown x1.3) or the aligned fallback alike.
    from matplotlib import cbook

    from jmvae.model.faces import FaceCropper
    from jmvae.service.images import decode_upload

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as portrait:
        face = portrait.convert("RGB").resize((178, 218), Image.Resampling.LANCZOS, box=(40, 0, 472, 529))
    face_name = sorted(n for n, p in zip(NAMES, PARTITION) if p == 0)[0]
    face.save(root / "img_align_celeba" / face_name, quality=90)
    dataset = _load(root, tmp_path / "cache")
    cropper = FaceCropper(PREP)
    sources = set()
    for split, partition in (("train", 0), ("val", 1)):
        names = sorted(n for n, p in zip(NAMES, PARTITION) if p == partition)
        for name, cached in zip(names, dataset.splits[split].images, strict=True):
            upload = (root / "img_align_celeba" / name).read_bytes()
            crop = cropper.crop(decode_upload(upload, max_pixels=10_000_000))
            np.testing.assert_array_equal(cached, crop.pixels)
            sources.add((name == face_name, crop.source))
    assert sources == {(True, "detected"), (False, "fallback")}
    aligned = _load(root, tmp_path / "aligned", preprocessing=PREP.model_copy(update={"crop": "aligned"}))
    assert not np.array_equal(aligned.splits["train"].images[0], dataset.splits["train"].images[0])


@pytest.mark.integration
def test_eval_crops_as_the_checkpoint_did_or_as_asked(
    root: Path, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from matplotlib import cbook

    from jmvae.cli import main

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as portrait:
        face = portrait.convert("RGB").resize((178, 218), Image.Resampling.LANCZOS, box=(40, 0, 472, 529))
    for name in (n for n, p in zip(NAMES, PARTITION) if p == 1):
        face.save(root / "img_align_celeba" / name, quality=90)
    printed = {}
    for crop in (None, "detector", "aligned"):
        args = [
            "eval",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(root),
            "--k",
            "2",
            "--nw",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ] + (["--crop", crop] if crop else [])
        assert main(args) == 0
        printed[crop] = json.loads(capsys.readouterr().out)
    # The tiny checkpoint was trained with the default crop, the service's: eval uses it unless told otherwise.
    assert (
        printed[None]["crop"] == printed["detector"]["crop"] == "detector" and printed["aligned"]["crop"] == "aligned"
    )
    assert printed[None]["log_px_single"] == printed["detector"]["log_px_single"]
    assert printed["aligned"]["log_px_single"] != printed["detector"]["log_px_single"]
    assert len(list((tmp_path / "cache").glob("celeba-*.images.npy"))) == 2  # one cache per crop
