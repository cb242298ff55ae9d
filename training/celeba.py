"""CelebA in its native on-disk layout, preprocessed once into a memory-mapped uint8 cache.

Layout under the root:
    img_align_celeba/*.jpg      the aligned faces, each cropped as the service crops an upload (jmvae.model.faces)
    list_attr_celeba.txt        count line, names line, then `NAME v1 ... v40` rows of -1/1
    list_eval_partition.txt     `NAME 0|1|2` (train/val/test)
    identity_CelebA.txt         optional `NAME id`

Partition policy: an image in list_attr without a partition row belongs to no split (partition -1); it is left
out of the cache, with a warning naming the first one. Partition (and identity) rows for images not in
list_attr are ignored, so the official full-size files can sit beside a restricted list_attr.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import multiprocessing
import os
import socket
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from jmvae.model.faces import FaceCropper
from jmvae.model.preprocess import Preprocessing, open_image
from jmvae.training.data import CELEBA_ATTRIBUTES, SPLITS, FaceArrays, FaceDataset

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"

# Bump when the cache's layout or row order changes, so old caches are never misread. It is part of the content
# key, so a bump also changes FaceDataset.content_key (and a checkpoint from before will not --resume).
# v2: the meta file carries the images file's sha256.
CACHE_FORMAT_VERSION = 2
_CHUNK = 64  # images per worker task: large enough to amortise IPC, small enough for a smooth progress bar


class CelebAFormatError(ValueError):
    """A CelebA file that does not parse; the message names the file and, where it applies, the 1-based line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        # All three go into args so the exception survives the trip back from a worker process.
        super().__init__(str(path), message, line)
        self.path = Path(path)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class CelebAIndex:
    """The parsed annotations, one row per image of list_attr, in list_attr's order."""

    root: Path
    filenames: tuple[str, ...]
    attributes: np.ndarray  # (N, 40) int8 in {-1, 1}, columns in CELEBA_ATTRIBUTES order
    attribute_names: tuple[str, ...]
    partition: np.ndarray  # (N,) int8: 0 train, 1 val, 2 test, -1 no partition row
    identities: np.ndarray | None  # (N,) int32, -1 where the identity file has no row; None without the file


def read_celeba(root: Path) -> CelebAIndex:
    """Parse and check the annotation files under `root` and that every listed image exists."""
    return _read(Path(root))[0]


def load_celeba(
    root: Path,
    preprocessing: Preprocessing,
    cache_dir: Path,
    workers: int | None = None,
    progress: bool = True,
) -> FaceDataset:
    """CelebA under `root` as a FaceDataset whose splits are read-only views of a memory-mapped cache.

    The cache is built on first use (decoding every image on `workers` processes) and reused while the
    annotation files, the listed images' names and sizes, and `preprocessing` are unchanged."""
    root, cache_dir = Path(root), Path(cache_dir)
    index, annotation_bytes = _read(root)
    image_dir = root / IMAGE_DIR
    sizes = [(image_dir / name).stat().st_size for name in index.filenames]
    key = _content_key(annotation_bytes, index.filenames, sizes, preprocessing)

    unassigned = np.flatnonzero(index.partition < 0)
    if len(unassigned):
        warnings.warn(
            f"{len(unassigned)} images in {root / ATTR_FILE} have no row in {root / PARTITION_FILE} and are in "
            f"no split (first: {index.filenames[unassigned[0]]})",
            stacklevel=2,
        )
    # Rows ordered by (partition, filename), so each split is one contiguous slice of the cache.
    names = np.array(index.filenames, dtype=str)
    order = np.lexsort((names, index.partition))
    order = order[index.partition[order] >= 0]

    cache_dir.mkdir(parents=True, exist_ok=True)
    images_path, meta_path = cache_dir / f"celeba-{key}.images.npy", cache_dir / f"celeba-{key}.meta.npz"
    size = preprocessing.image_size
    shape = (len(order), size, size, 3)
    attributes, partition = index.attributes[order], index.partition[order]
    meta = {
        "format_version": np.array(CACHE_FORMAT_VERSION),
        "filenames": names[order],
        "attribute_names": np.array(index.attribute_names, dtype=str),
        "attributes": attributes,
        "partition": partition,
    }
    # Check and build under one lock, so a second run waits for the first one's build and then reuses it.
    with _locked(cache_dir / f"celeba-{key}.lock"):
        try:
            images = _open_cache(images_path, meta_path, shape, meta)
        except _CacheUnusable as problem:
            if images_path.exists() or meta_path.exists():  # not a first build: say what was wrong
                warnings.warn(f"{problem}; rebuilding", stacklevel=2)
            meta_path.unlink(missing_ok=True)  # first: a meta file must only ever stand beside a complete images file
            images_path.unlink(missing_ok=True)  # frees its space before the new one is written (the disk may be full)
            _build_cache(root, [index.filenames[i] for i in order], preprocessing, images_path, workers, progress)
            _save_atomically(meta_path, meta | {"images_sha256": np.array(_sha256(images_path))})
            images = _open_cache(images_path, meta_path, shape, meta)  # reads back what was written

    bounds = np.searchsorted(partition, np.arange(len(SPLITS) + 1), side="left")
    splits = {
        split: FaceArrays(images[bounds[p] : bounds[p + 1]], attributes[bounds[p] : bounds[p + 1]])
        for p, split in enumerate(SPLITS)
    }
    return FaceDataset(name=str(root), content_key=key, attribute_names=index.attribute_names, splits=splits)


def _read(root: Path) -> tuple[CelebAIndex, dict[str, bytes | None]]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CelebA root directory does not exist")
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image directory does not exist")
    raw = {
        ATTR_FILE: _read_bytes(root / ATTR_FILE),
        PARTITION_FILE: _read_bytes(root / PARTITION_FILE),
        IDENTITY_FILE: _read_bytes(root / IDENTITY_FILE) if (root / IDENTITY_FILE).exists() else None,
    }
    attr_path = root / ATTR_FILE
    filenames, attributes, attr_lines = _parse_attributes(attr_path, _lines(attr_path, raw[ATTR_FILE]))

    present = set(os.listdir(image_dir))
    for name, line in zip(filenames, attr_lines):
        if name not in present:
            raise FileNotFoundError(f"{image_dir / name}: image listed in {attr_path}:{line} does not exist")

    partition_path = root / PARTITION_FILE
    by_name = _parse_pairs(
        partition_path,
        _lines(partition_path, raw[PARTITION_FILE]),
        "partition",
        lambda token: int(token) if token in ("0", "1", "2") else None,
    )
    partition = np.array([by_name.get(name, -1) for name in filenames], dtype=np.int8)

    identities = None
    if raw[IDENTITY_FILE] is not None:
        identity_path = root / IDENTITY_FILE
        ids = _parse_pairs(
            identity_path,
            _lines(identity_path, raw[IDENTITY_FILE]),
            "identity",
            lambda token: int(token) if token.isascii() and token.isdigit() else None,
        )
        identities = np.array([ids.get(name, -1) for name in filenames], dtype=np.int32)

    index = CelebAIndex(root, filenames, attributes, CELEBA_ATTRIBUTES, partition, identities)
    return index, raw


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: required CelebA file does not exist")
    return path.read_bytes()


def _lines(path: Path, data: bytes) -> list[str]:
    """Text lines of a CRLF/LF/CR file, trailing blank lines dropped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CelebAFormatError(path, "not UTF-8 text", data.count(b"\n", 0, error.start) + 1) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_name(path: Path, name: str, line: int) -> None:
    # A name is looked up inside the image directory: a path in it would escape that directory.
    if name in (".", "..") or "/" in name or "\\" in name:
        raise CelebAFormatError(path, f"{name!r} is not a plain file name", line)


def _parse_attributes(path: Path, lines: list[str]) -> tuple[tuple[str, ...], np.ndarray, list[int]]:
    if not lines:
        raise CelebAFormatError(path, "empty file; expected a count line", 1)
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise CelebAFormatError(path, f"count line {lines[0].strip()!r} is not an integer", 1) from None
    if len(lines) < 2:
        raise CelebAFormatError(path, "missing the attribute names line", 2)
    names = lines[1].split()
    unknown = [n for n in names if n not in CELEBA_ATTRIBUTES]
    missing = [n for n in CELEBA_ATTRIBUTES if n not in names]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if unknown or missing or duplicated:
        problems = [
            f"{label} {found}"
            for label, found in (("unknown", unknown), ("missing", missing), ("duplicated", duplicated))
            if found
        ]
        raise CelebAFormatError(path, "attribute names differ from CelebA's 40: " + "; ".join(problems), 2)

    width = len(names) + 1
    filenames: list[str] = []
    tokens: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != width:
            raise CelebAFormatError(
                path, f"expected a file name and {width - 1} values, found {len(parts)} fields", line_no
            )
        name = parts[0]
        _check_name(path, name, line_no)
        if name in first_line:
            raise CelebAFormatError(path, f"duplicate file name {name!r} (first on line {first_line[name]})", line_no)
        first_line[name] = line_no
        filenames.append(name)
        tokens.extend(parts[1:])
    if count != len(filenames):
        raise CelebAFormatError(path, f"count line says {count} images but the file lists {len(filenames)}", 1)

    # One C-level pass over all values: -1 is stored as byte 0xFF, anything else as 0 and reported.
    codes = bytes(map({"1": 1, "-1": 0xFF}.get, tokens, repeat(0)))
    values = np.frombuffer(codes, dtype=np.int8).reshape(len(filenames), len(names))
    bad = np.argwhere(values == 0)
    if len(bad):
        row, column = bad[0]
        raise CelebAFormatError(
            path, f"{names[column]} is {tokens[row * len(names) + column]!r}, expected -1 or 1", int(row) + 3
        )
    columns = [names.index(n) for n in CELEBA_ATTRIBUTES]
    return tuple(filenames), np.ascontiguousarray(values[:, columns]), list(first_line.values())


def _parse_pairs(path: Path, lines: list[str], what: str, convert: Callable[[str], int | None]) -> dict[str, int]:
    """`NAME value` rows as a dict; `convert` returns None for a value it rejects."""
    found: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) != 2:
            raise CelebAFormatError(path, f"expected a file name and a {what}, found {len(parts)} fields", line_no)
        name, token = parts
        _check_name(path, name, line_no)
        if name in first_line:
            raise CelebAFormatError(path, f"duplicate file name {name!r} (first on line {first_line[name]})", line_no)
        value = convert(token)
        if value is None:
            raise CelebAFormatError(path, f"{token!r} is not a valid {what}", line_no)
        first_line[name] = line_no
        found[name] = value
    return found


def _content_key(
    annotations: dict[str, bytes | None], filenames: tuple[str, ...], sizes: list[int], preprocessing: Preprocessing
) -> str:
    digest = hashlib.sha256(f"jmvae-celeba-cache v{CACHE_FORMAT_VERSION}\n".encode())
    for name, data in sorted(annotations.items()):
        # Length-prefixed so content cannot shift between fields and collide.
        digest.update(f"{name} {-1 if data is None else len(data)}\n".encode())
        digest.update(data or b"")
    listing = "".join(f"{name}\0{size}\n" for name, size in sorted(zip(filenames, sizes)))
    digest.update(f"images {len(filenames)}\n{listing}".encode())
    digest.update(preprocessing.model_dump_json().encode())
    return digest.hexdigest()


class _CacheUnusable(Exception):
    """Why a cache on disk cannot be used, naming the file; load_celeba rebuilds it."""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, across processes and across threads (each open() is its own lock owner).

    The lock file stays: deleting it would let a waiter lock a file that a newcomer no longer sees."""
    try:
        file = open(path, "a")
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield  # a read-only cache dir: nobody can build in it, so there is no build to wait for, and reading works
        return
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(f"{path}: another run is building or checking this cache; waiting for it", stacklevel=3)
            fcntl.flock(file, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the build raised


def _sha256(path: Path) -> str:
    # Measured from the page cache: 46 ms per 65 MB (1.4 GB/s with SHA-NI; blake2b took 79 ms), so ~1.8 s for all
    # of CelebA at 64 px (2.5 GB). Small beside a training run that reads every image anyway, so each load verifies.
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _open_cache(images_path: Path, meta_path: Path, shape: tuple[int, ...], meta: dict[str, np.ndarray]) -> np.ndarray:
    """The images file mapped read-only once the meta file matches `meta` and the images file its header, size and
    the meta's checksum; otherwise raises _CacheUnusable. Checked before mapping: a short file cannot be mapped."""
    if not meta_path.exists():
        raise _CacheUnusable(f"{meta_path}: missing")
    try:
        with open(meta_path, "rb") as file, np.lib.npyio.NpzFile(file, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}  # each member's CRC-32 is checked as it is read
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise _CacheUnusable(f"{meta_path}: unreadable ({type(error).__name__}: {error})") from None
    version = stored.get("format_version", np.array(None)).tolist()
    if version != CACHE_FORMAT_VERSION:
        raise _CacheUnusable(f"{meta_path}: format version {version}, expected {CACHE_FORMAT_VERSION}")
    if stored.keys() != (fields := meta.keys() | {"images_sha256"}):
        raise _CacheUnusable(f"{meta_path}: holds {sorted(stored)}, expected {sorted(fields)}")
    if not all(np.array_equal(stored[k], v) for k, v in meta.items()):
        raise _CacheUnusable(f"{meta_path}: does not describe these annotations")

    if not images_path.exists():
        raise _CacheUnusable(f"{images_path}: missing")
    with open(images_path, "rb") as file:
        try:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            header = read_header[np.lib.format.read_magic(file)](file)
        except (ValueError, KeyError) as error:
            raise _CacheUnusable(f"{images_path}: not a readable .npy header ({error})") from None
        if header != (shape, False, np.dtype(np.uint8)):
            raise _CacheUnusable(f"{images_path}: holds {header[2]} {header[0]}, expected uint8 {shape}")
        actual, expected = os.fstat(file.fileno()).st_size, file.tell() + math.prod(shape)
    if actual != expected:
        raise _CacheUnusable(f"{images_path}: {actual:,} bytes, expected {expected:,}")
    if _sha256(images_path) != stored["images_sha256"].tolist():
        raise _CacheUnusable(f"{images_path}: sha256 differs from the one in {meta_path.name}")
    return np.load(images_path, mmap_mode="r", allow_pickle=False)


def _temp_path(final: Path) -> Path:
    # Host and pid in the name let a later run tell a dead builder's leftovers from a live builder's file.
    return final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _remove_stale_temps(cache_dir: Path) -> None:
    """Delete temp files of builders on this host that died (killed runs leave theirs behind)."""
    host = socket.gethostname()
    for path in cache_dir.glob(".celeba-*.tmp"):
        prefix, _, pid = path.name.removesuffix(".tmp").rpartition(".")
        if not prefix.endswith(f".{host}") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's process
            pass


def _save_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temp = _temp_path(path)
    try:
        with open(temp, "wb") as file:
            np.savez(file, allow_pickle=False, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _build_cache(
    root: Path,
    filenames: list[str],
    preprocessing: Preprocessing,
    images_path: Path,
    workers: int | None,
    progress: bool,
) -> None:
    _remove_stale_temps(images_path.parent)
    temp = _temp_path(images_path)
    size = preprocessing.image_size
    try:
        target = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(len(filenames), size, size, 3))
        del target  # header and file size are on disk; workers map the file themselves
        tasks = [(start, filenames[start : start + _CHUNK]) for start in range(0, len(filenames), _CHUNK)]
        workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
        with tqdm(total=len(filenames), unit="img", desc="preprocessing CelebA", disable=not progress) as bar:
            for done in _run(tasks, (str(root / IMAGE_DIR), str(temp), preprocessing.model_dump_json()), workers):
                bar.update(done)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, images_path)
    finally:
        temp.unlink(missing_ok=True)


def _run(tasks: list[tuple[int, list[str]]], setup: tuple[str, str, str], workers: int) -> Iterator[int]:
    if workers == 1:  # no pool for one worker: nothing to gain, and errors keep a plain traceback
        _init_worker(*setup)
        try:
            yield from map(_process_chunk, tasks)
        finally:
            _worker.clear()  # drop the mapping of the temp file before it is renamed
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=setup) as pool:
        yield from pool.imap_unordered(_process_chunk, tasks)


# Per-process state of a cache-building worker, set once by _init_worker.
_worker: dict[str, object] = {}


def _init_worker(image_dir: str, target_path: str, preprocessing_json: str) -> None:
    # The pool already runs one process per core; OpenCV's own threads on top would only contend with them.
    cv2.setNumThreads(1)
    _worker["image_dir"] = Path(image_dir)
    _worker["target"] = np.load(target_path, mmap_mode="r+", allow_pickle=False)
    _worker["cropper"] = FaceCropper(Preprocessing.model_validate_json(preprocessing_json))


def _process_chunk(task: tuple[int, list[str]]) -> int:
    start, filenames = task
    image_dir: Path = _worker["image_dir"]  # type: ignore[assignment]
    target: np.ndarray = _worker["target"]  # type: ignore[assignment]
    cropper: FaceCropper = _worker["cropper"]  # type: ignore[assignment]
    for offset, name in enumerate(filenames):
        target[start + offset] = _preprocess_image(image_dir / name, cropper)
    return len(filenames)


def _preprocess_image(path: Path, cropper: FaceCropper) -> np.ndarray:
    try:
        image = open_image(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, ... for damaged files
        raise CelebAFormatError(path, f"cannot decode image ({type(error).__name__}: {error})") from None
    return cropper.crop(image).pixels  # the service's own crop of an upload of this file
