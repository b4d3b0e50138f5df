"""Download CIFAR-10 from its official home and convert it to aimc's numpy files.

:func:`fetch_cifar10` gets the official *binary* archive ``cifar-10-binary.tar.gz`` (the Python version of the
archive holds pickles, which aimc never loads), checks it against the checksum published on the data set's page,
and writes ``cifar10/cifar10-train.npz`` and ``cifar10/cifar10-test.npz`` (``images`` uint8 (N, 32, 32, 3),
``labels`` uint8 (N,), ``classes``) into the data folder::

    aimc data fetch cifar10                  # into the user cache folder (see data_cache_dir)
    aimc data fetch cifar10 --data-dir DIR   # into DIR/cifar10/

The download shows a progress bar, resumes an interrupted transfer (the bytes received so far are kept in
``cifar-10-binary.tar.gz.part`` and the rest is asked for with an HTTP Range request) and keeps nothing that does not
match the checksum. Every file is written under a temporary name in its folder and renamed when complete, so a
half-written file is never taken for data.

Without internet access, download the archive by hand from :data:`CIFAR10_URL`, put it in ``DIR/cifar10/`` and run
the same command: an archive found there is verified and converted instead of downloaded. A downloaded archive is
deleted once converted; one put there by hand is left in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from aimc._version import __version__
from aimc.errors import AimcError, CorruptFileError

__all__ = [
    "CACHE_DIR_ENV",
    "CIFAR10_ARCHIVE",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "NO_DOWNLOAD_ENV",
    "ChecksumError",
    "DownloadError",
    "convert_cifar10_archive",
    "data_cache_dir",
    "download_file",
    "downloads_allowed",
    "fetch_cifar10",
    "has_cifar10",
]

#: The official CIFAR-10 archive in its binary format (no pickles inside).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
#: MD5 checksum of :data:`CIFAR10_URL` as published on the data set's page (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
#: File name of the archive, also where one is looked for when it is put in a data folder by hand.
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
#: Class names in label order (the archive's ``batches.meta.txt``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: Environment variable: the cache folder of aimc (downloaded data go to its ``data`` subfolder).
CACHE_DIR_ENV = "AIMC_CACHE_DIR"
#: Environment variable: set to 1 to never download data automatically (``aimc data fetch`` still does).
NO_DOWNLOAD_ENV = "AIMC_NO_DOWNLOAD"

_BATCH_DIR = "cifar-10-batches-bin"
_TRAIN_BATCHES = tuple(f"{_BATCH_DIR}/data_batch_{i}.bin" for i in range(1, 6))
_TEST_BATCHES = (f"{_BATCH_DIR}/test_batch.bin",)
_META = f"{_BATCH_DIR}/batches.meta.txt"
_RECORD = 1 + 3 * 32 * 32  # one label byte, then the image as 3 planes (R, G, B) of 32 rows of 32 pixels
_MAX_BATCH_BYTES = 20_000 * _RECORD  # the official batches hold 10,000 records each
_CHUNK = 1 << 20


class DownloadError(AimcError, OSError):
    """A file could not be downloaded (no network, server error). The message names the address, the expected
    checksum and the folder where the file can be put by hand instead."""


class ChecksumError(CorruptFileError):
    """A downloaded or hand-placed file does not match its published checksum; it is not used."""


def data_cache_dir() -> Path:
    """The folder downloaded data go to: ``$AIMC_CACHE_DIR/data``, else ``data`` in the platform's user cache
    folder of aimc (``platformdirs.user_cache_dir("aimc")``, e.g. ``~/.cache/aimc/data`` on Linux)."""
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("aimc")
    return Path(folder) / "data"


def downloads_allowed() -> bool:
    """False when ``$AIMC_NO_DOWNLOAD`` is set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


def has_cifar10(data_dir: str | os.PathLike[str]) -> bool:
    """Whether ``data_dir/cifar10/`` holds both converted files."""
    folder = Path(data_dir) / "cifar10"
    return (folder / "cifar10-train.npz").is_file() and (folder / "cifar10-test.npz").is_file()


def _algorithm(checksum: str) -> str:
    digest = checksum.strip().lower()
    kinds = {32: "md5", 64: "sha256"}
    if len(digest) not in kinds or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"checksum must be an md5 (32 hex digits) or sha256 (64 hex digits); got {checksum!r}")
    return kinds[len(digest)]


def file_checksum(path: str | os.PathLike[str], algorithm: str) -> str:
    """The hex digest of a file (``algorithm`` ``"md5"`` or ``"sha256"``), read in chunks."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (so that processes starting together download once); a no-op where
    file locks are not available."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)  # the folder itself is locked: no lock file is left behind
    except OSError:  # pragma: no cover - a platform that cannot open folders
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without locks: go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _by_hand(url: str, checksum: str, dest: Path) -> str:
    return (
        f"Download {url} by hand (its {_algorithm(checksum)} checksum is {checksum}), put it in {dest.parent} as "
        f"{dest.name} and run the command again: an archive found there is verified and used"
    )


def _progress_bar(total: int | None, initial: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if progress else True,  # None: shown on a terminal only, not in logs
        file=sys.stderr,
    )


def _content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None if it cannot be read."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _fetch_once(url: str, part: Path, timeout: float, bar) -> None:
    """One HTTP request appending the rest of ``url`` to ``part`` (from scratch if the server ignores the Range).

    Raises urllib.error.HTTPError (416 included), OSError or http.client.HTTPException on failure; an early end of
    the body raises ConnectionError. The bytes received before the failure stay in ``part``.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"aimc/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if have and status == 206 and _content_range_start(response.headers.get("Content-Range")) != have:
            part.unlink()  # another range than the one asked for: the next attempt starts over without Range
            raise ConnectionError(f"the server answered another range than bytes={have}-")
        if have and status != 206:
            have = 0  # the server sends the whole file (it ignores Range): start over
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if bar.total is None and expected is not None:
            bar.total = have + expected
        bar.n = have
        bar.refresh()
        received = 0
        with open(part, "ab" if have else "wb") as f:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                received += len(block)
                bar.update(len(block))
        if expected is not None and received != expected:
            raise ConnectionError(f"the connection closed after {have + received} of {have + expected} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    checksum: str,
    *,
    progress: bool = True,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    desc: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming an interrupted transfer, and keep it only if it matches ``checksum``.

    The bytes go to ``dest`` + ``.part``; a later call (or a retry after a dropped connection, up to ``retries``
    times) asks only for the rest with an HTTP Range request, and starts over cleanly if the server sends the whole
    file instead. The complete file is checked and then renamed to ``dest``.

    Args:
        url: the address (http or https).
        dest: the file to write.
        checksum: expected md5 (32 hex digits) or sha256 (64 hex digits) of the whole file.
        progress: show a progress bar on stderr when it is a terminal.
        retries: further attempts after a network failure (the transfer goes on where it stopped).
        retry_wait: seconds before a retry that follows an attempt which received nothing (doubling each time).
        timeout: seconds without an answer from the server before an attempt fails.
        desc: label of the progress bar (default: the file name).

    Returns:
        ``dest``.

    Raises:
        ChecksumError: the file does not match ``checksum``; nothing is kept (the partial file is deleted).
        DownloadError: the server cannot be reached or refuses the file; the bytes received so far are kept for the
            next call, and the message says where to put the file by hand.
    """
    dest = Path(dest)
    checksum = checksum.strip().lower()
    algorithm = _algorithm(checksum)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    wait = retry_wait
    with _progress_bar(None, 0, desc or dest.name, progress) as bar:
        attempt = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _fetch_once(url, part, timeout, bar)
                break
            except urllib.error.HTTPError as err:
                if err.code == 416 and part.exists():  # nothing left to send: the part file may be complete
                    if file_checksum(part, algorithm) == checksum:
                        break
                    part.unlink()
                    continue
                if err.code < 500 or attempt >= retries:
                    raise DownloadError(
                        f"could not download {url}: the server answered {err.code} {err.reason}. "
                        + _by_hand(url, checksum, dest)
                    ) from None
            except (OSError, http.client.HTTPException) as err:
                if attempt >= retries:
                    reason = getattr(err, "reason", None) or err
                    raise DownloadError(
                        f"could not download {url} ({reason}). " + _by_hand(url, checksum, dest)
                    ) from None
            attempt += 1
            after = part.stat().st_size if part.exists() else 0
            if after <= before:  # no progress in this attempt: wait a little before the next
                time.sleep(wait)
                wait *= 2
    actual = file_checksum(part, algorithm)
    if actual != checksum:
        part.unlink()
        raise ChecksumError(
            f"the file downloaded from {url} has {algorithm} {actual}, expected {checksum}; it was deleted. "
            "Try again; if this persists, the file on the server or a proxy in between is not the published one"
        )
    os.replace(part, dest)
    return dest


def _read_member(tar: tarfile.TarFile, name: str, archive: Path) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise CorruptFileError(f"{str(archive)!r} is not the CIFAR-10 binary archive: it has no {name}") from None
    if not member.isfile() or member.size > _MAX_BATCH_BYTES:
        raise CorruptFileError(f"{str(archive)!r}: {name} is not a CIFAR-10 batch file")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f.read()


def _parse_batches(tar: tarfile.TarFile, names: tuple[str, ...], archive: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        raw = _read_member(tar, name, archive)
        if not raw or len(raw) % _RECORD:
            raise CorruptFileError(
                f"{str(archive)!r}: {name} holds {len(raw)} bytes, not a whole number of {_RECORD}-byte records"
            )
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
        label = records[:, 0]
        if label.max() >= len(CIFAR10_CLASSES):
            raise CorruptFileError(f"{str(archive)!r}: {name} has label {int(label.max())}, expected 0-9")
        labels.append(label.copy())
        # channel-major (N, 3, 32, 32) as stored -> (N, 32, 32, 3) as aimc keeps images
        images.append(np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)))
    return np.concatenate(images), np.concatenate(labels)


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, so that the first images can be read without the rest) to a temporary file in
    ``path``'s folder, renamed to ``path`` once complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def convert_cifar10_archive(archive: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Convert the official binary archive to ``out_dir/cifar10-train.npz`` and ``out_dir/cifar10-test.npz``.

    The archive's batches (records of 1 label byte and a 3x32x32 channel-major image) are read from the archive
    without unpacking it to disk; training images are in ``data_batch_1`` ... ``data_batch_5`` order. Returns the
    paths of the two files.
    """
    archive = Path(archive)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            classes = CIFAR10_CLASSES
            with contextlib.suppress(KeyError):
                text = _read_member(tar, _META, archive).decode("ascii", errors="replace")
                names = tuple(line.strip() for line in text.splitlines() if line.strip())
                if len(names) == len(CIFAR10_CLASSES):
                    classes = names
            splits = {
                "test": _parse_batches(tar, _TEST_BATCHES, archive),
                "train": _parse_batches(tar, _TRAIN_BATCHES, archive),
            }
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        if isinstance(err, CorruptFileError):
            raise
        raise CorruptFileError(f"{str(archive)!r} is not a readable .tar.gz archive: {err}") from None
    paths = []
    for split, (images, labels) in splits.items():
        path = out / f"cifar10-{split}.npz"
        _write_npz_atomic(path, images=images, labels=labels, classes=np.array(classes))
        paths.append(path)
    return paths[1], paths[0]


def fetch_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str = CIFAR10_URL,
    checksum: str = CIFAR10_MD5,
    progress: bool = True,
    force: bool = False,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    log=None,
) -> Path:
    """Make ``data_dir/cifar10/cifar10-{train,test}.npz`` from the official archive and return ``data_dir``.

    ``data_dir`` defaults to :func:`data_cache_dir`. Nothing happens if both files are there already (unless
    ``force``). An archive ``cifar-10-binary.tar.gz`` already in ``data_dir/cifar10/`` (put there by hand) is
    verified and converted, not downloaded, and left in place; otherwise it is downloaded from ``url`` (see
    :func:`download_file`), converted and deleted. ``log`` (e.g. ``print``) receives one line per step.

    Raises:
        ChecksumError: the archive does not match ``checksum``.
        DownloadError: it cannot be downloaded; the message says where to put it by hand.
        CorruptFileError: the archive matches the checksum but is not the CIFAR-10 binary archive.
    """
    root = Path(data_dir) if data_dir is not None else data_cache_dir()
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _text: None)
    with _folder_lock(folder):
        if has_cifar10(root) and not force:
            say(f"CIFAR-10 is already in {folder}")
            return root
        archive = folder / CIFAR10_ARCHIVE
        algorithm = _algorithm(checksum)
        if archive.is_file():
            say(f"verifying {archive}")
            actual = file_checksum(archive, algorithm)
            if actual != checksum.strip().lower():
                raise ChecksumError(
                    f"{archive} has {algorithm} {actual}, expected {checksum} (the published checksum of {url}); "
                    "delete it or replace it with the official file"
                )
            downloaded = False
        else:
            say(f"downloading CIFAR-10 (about 163 MiB) from {url} into {folder}")
            download_file(
                url,
                archive,
                checksum,
                progress=progress,
                retries=retries,
                retry_wait=retry_wait,
                timeout=timeout,
                desc="CIFAR-10",
            )
            downloaded = True
        say(f"converting {archive.name} to {folder}/cifar10-{{train,test}}.npz")
        convert_cifar10_archive(archive, folder)
        if downloaded:
            archive.unlink()
    return root
