"""CIFAR-10 download, verification, conversion and lookup, against a local HTTP server (never the real network or
the user's cache): a small archive in the official binary format, served with Range support."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import aimc.data.cifar10 as cifar10_module
from aimc.cli import main
from aimc.data import (
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    cifar10_tensors,
    fetch_cifar10,
    find_data_dir,
    load_cifar10,
)
from aimc.data import download as dl
from aimc.errors import ValidationError

RECORDS = 20  # per batch file
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _batch(rng: np.random.Generator) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A batch file in the official format (1 label byte + 3072 bytes channel-major per record) and its content as
    aimc keeps it (images HWC)."""
    images = rng.integers(0, 256, size=(RECORDS, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=RECORDS, dtype=np.uint8)
    records = (bytes([int(lab)]) + img.transpose(2, 0, 1).tobytes() for img, lab in zip(images, labels, strict=True))
    raw = b"".join(records)
    return raw, images, labels


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@functools.lru_cache(maxsize=1)
def _archive() -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]], bytes]:
    """(archive bytes, {split: (images, labels)}, the raw test batch)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    expected: dict[str, list] = {"train": [[], []], "test": [[], []]}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-bin")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(CLASSES) + "\n\n").encode())
        for i in range(1, 6):
            raw, images, labels = _batch(rng)
            _add(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", raw)
            expected["train"][0].append(images)
            expected["train"][1].append(labels)
        raw_test, images, labels = _batch(rng)
        _add(tar, "cifar-10-batches-bin/test_batch.bin", raw_test)
        expected["test"] = [[images], [labels]]
        _add(tar, "cifar-10-batches-bin/readme.html", b"<html></html>")
    splits = {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in expected.items()}
    return buf.getvalue(), splits, raw_test


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Server:
    """A local HTTP server of one file: honours Range requests (or not), and can drop the connection halfway."""

    def __init__(self) -> None:
        self.payload = _archive()[0]
        self.honor_range = True
        self.drops = 0  # the next `drops` requests send half their body, then close the connection
        self.ranges: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                owner.ranges.append(rng)
                data, start = owner.payload, 0
                if rng and owner.honor_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.drops > 0:
                    owner.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-binary.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No CIFAR-10 anywhere: an empty working directory, no $AIMC_DATA, an empty cache folder of the test's own."""
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("AIMC_DATA", raising=False)
    monkeypatch.delenv("AIMC_NO_DOWNLOAD", raising=False)
    monkeypatch.setenv("AIMC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def _fetch(server: _Server, root: Path, **kw):
    kw.setdefault("checksum", _md5(server.payload))
    return fetch_cifar10(root, url=server.url, progress=False, retry_wait=0, **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_and_converts(server, tmp_path):
    _, expected, raw_test = _archive()
    root = _fetch(server, tmp_path / "d")
    assert root == tmp_path / "d"
    # the downloaded archive is deleted once converted; no partial or temporary file stays
    assert _leftovers(root / "cifar10") == ["cifar10-test.npz", "cifar10-train.npz"]
    for split in ("train", "test"):
        images, labels = load_cifar10(split, root)
        assert images.shape == (RECORDS * (5 if split == "train" else 1), 32, 32, 3)
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal(labels, expected[split][1])
    # HWC layout: channel c of pixel (r, col) of record i is byte 1 + c * 1024 + r * 32 + col of the record
    images, labels = load_cifar10("test", root)
    for i, r, col in [(0, 0, 1), (1, 31, 30), (RECORDS - 1, 5, 17)]:
        record = raw_test[i * 3073 : (i + 1) * 3073]
        assert labels[i] == record[0]
        assert list(images[i, r, col]) == [record[1 + c * 1024 + r * 32 + col] for c in range(3)]
    with np.load(root / "cifar10" / "cifar10-test.npz", allow_pickle=False) as d:
        assert tuple(d["classes"]) == CLASSES
    # already there: nothing is downloaded again
    requests = len(server.ranges)
    assert _fetch(server, tmp_path / "d") == root
    assert len(server.ranges) == requests


def test_sha256_checksum_accepted(server, tmp_path):
    root = _fetch(server, tmp_path / "d", checksum=hashlib.sha256(server.payload).hexdigest())
    assert _leftovers(root / "cifar10") == ["cifar10-test.npz", "cifar10-train.npz"]


def test_corrupt_archive_fails_checksum_and_leaves_nothing(server, tmp_path):
    good = _md5(server.payload)
    bad = bytearray(server.payload)
    bad[len(bad) // 2] ^= 0xFF
    server.payload = bytes(bad)
    with pytest.raises(ChecksumError) as err:
        _fetch(server, tmp_path / "d", checksum=good)
    message = str(err.value)
    assert server.url in message and good in message and _md5(server.payload) in message
    assert _leftovers(tmp_path / "d" / "cifar10") == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.drops = 1
    root = _fetch(server, tmp_path / "d")
    half = len(server.payload) // 2
    assert server.ranges == [None, f"bytes={half}-"]
    np.testing.assert_array_equal(load_cifar10("test", root)[0], _archive()[1]["test"][0])
    assert _leftovers(root / "cifar10") == ["cifar10-test.npz", "cifar10-train.npz"]


def test_interrupted_download_resumed_by_the_next_call(server, tmp_path):
    server.drops = 1
    with pytest.raises(DownloadError):
        _fetch(server, tmp_path / "d", retries=0)
    folder = tmp_path / "d" / "cifar10"
    assert _leftovers(folder) == ["cifar-10-binary.tar.gz.part"]  # the bytes received so far, nothing converted
    half = len(server.payload) // 2
    assert (folder / "cifar-10-binary.tar.gz.part").stat().st_size == half
    _fetch(server, tmp_path / "d", retries=0)
    assert server.ranges == [None, f"bytes={half}-"]
    assert _leftovers(folder) == ["cifar10-test.npz", "cifar10-train.npz"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honor_range = False
    server.drops = 1
    root = _fetch(server, tmp_path / "d")
    assert server.ranges[1] is not None  # asked for the rest, got the whole file, and started over
    np.testing.assert_array_equal(load_cifar10("train", root)[0], _archive()[1]["train"][0])


def test_complete_part_file_is_used(server, tmp_path):
    folder = tmp_path / "d" / "cifar10"
    folder.mkdir(parents=True)
    (folder / "cifar-10-binary.tar.gz.part").write_bytes(server.payload)
    _fetch(server, tmp_path / "d")
    assert server.ranges == [f"bytes={len(server.payload)}-"]  # answered 416: the part file was already whole
    assert _leftovers(folder) == ["cifar10-test.npz", "cifar10-train.npz"]


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"


def test_offline_error_names_url_checksum_and_folder(tmp_path):
    url = _closed_port_url()
    with pytest.raises(DownloadError) as err:
        fetch_cifar10(tmp_path / "d", url=url, progress=False, retries=1, retry_wait=0)
    message = str(err.value)
    assert url in message
    assert dl.CIFAR10_MD5 in message
    assert str(tmp_path / "d" / "cifar10") in message
    assert isinstance(err.value, OSError)


def test_archive_put_by_hand_is_verified_and_converted(tmp_path):
    payload, expected, _ = _archive()
    folder = tmp_path / "d" / "cifar10"
    folder.mkdir(parents=True)
    (folder / dl.CIFAR10_ARCHIVE).write_bytes(payload)
    url = _closed_port_url()  # no network needed
    fetch_cifar10(tmp_path / "d", url=url, checksum=_md5(payload), progress=False, retries=0)
    np.testing.assert_array_equal(load_cifar10("train", tmp_path / "d")[1], expected["train"][1])
    assert (folder / dl.CIFAR10_ARCHIVE).is_file()  # a file put there by hand is left in place
    (folder / "cifar10-test.npz").unlink()
    with pytest.raises(ChecksumError, match="delete it or replace it"):
        fetch_cifar10(tmp_path / "d", url=url, progress=False, retries=0)  # the official checksum: no match
    assert not (folder / "cifar10-test.npz").exists()


def test_not_an_archive_is_rejected(tmp_path):
    folder = tmp_path / "d" / "cifar10"
    folder.mkdir(parents=True)
    junk = b"not a tar.gz" * 100
    (folder / dl.CIFAR10_ARCHIVE).write_bytes(junk)
    with pytest.raises(ValidationError, match="not a readable"):
        fetch_cifar10(tmp_path / "d", url=_closed_port_url(), checksum=_md5(junk), progress=False)
    assert _leftovers(folder) == [dl.CIFAR10_ARCHIVE]


def _npz(path: Path, images: np.ndarray, labels: np.ndarray, compressed: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, images=images, labels=labels, classes=np.array(CLASSES))


def test_first_n_images_read_without_the_rest(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40, dtype=np.uint8)
    path = tmp_path / "d" / "cifar10" / "cifar10-test.npz"
    _npz(path, images, labels, compressed=False)
    x_all, y_all = cifar10_tensors("test", data_dir=tmp_path / "d")
    # overwrite the last 30 images inside the file: a full read now fails its CRC check, the first 5 are intact
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images.npy")
    raw = bytearray(path.read_bytes())
    local = info.header_offset
    start = local + 30 + int.from_bytes(raw[local + 26 : local + 28], "little")
    start += int.from_bytes(raw[local + 28 : local + 30], "little")
    end = start + info.file_size
    raw[end - 30 * 3072 : end] = b"\xff" * (30 * 3072)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValidationError, match="not a valid CIFAR-10 npz"):
        load_cifar10("test", tmp_path / "d")
    x5, y5 = cifar10_tensors("test", 5, tmp_path / "d")
    assert x5.shape == (5, 3, 32, 32) and x5.dtype == torch.float32
    torch.testing.assert_close(x5, x_all[:5], rtol=0, atol=0)
    torch.testing.assert_close(y5, y_all[:5], rtol=0, atol=0)


def test_first_n_images_of_a_compressed_file(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=30, dtype=np.uint8)
    _npz(tmp_path / "d" / "cifar10" / "cifar10-train.npz", images, labels, compressed=True)
    x, y = load_cifar10("train", tmp_path / "d", n=7)
    np.testing.assert_array_equal(x, images[:7])
    np.testing.assert_array_equal(y, labels[:7])
    assert x.flags.writeable
    x, y = load_cifar10("train", tmp_path / "d", n=100)  # more than there are: all of them
    np.testing.assert_array_equal(x, images)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "d" / "cifar10" / "cifar10-test.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, images=np.array([object()] * 3, dtype=object), labels=np.zeros(3, np.uint8))
    for n in (None, 2):
        with pytest.raises(ValidationError, match="not a valid CIFAR-10 npz"):
            load_cifar10("test", tmp_path / "d", n=n)


def test_no_download_gives_a_clear_error(no_data, monkeypatch):
    monkeypatch.setenv("AIMC_NO_DOWNLOAD", "1")
    with pytest.raises(DataNotFoundError) as err:
        cifar10_tensors("test", 5)
    message = str(err.value)
    assert "aimc data fetch cifar10" in message
    assert "AIMC_NO_DOWNLOAD" in message
    assert str(no_data) in message and dl.CIFAR10_URL in message and dl.CIFAR10_MD5 in message


def test_found_nowhere_downloads_into_the_cache_on_first_use(no_data, server, monkeypatch):
    real = dl.fetch_cifar10
    monkeypatch.setattr(
        cifar10_module,
        "fetch_cifar10",
        lambda root: real(root, url=server.url, checksum=_md5(server.payload), progress=False, retry_wait=0),
    )
    x, y = cifar10_tensors("test", 3)
    assert find_data_dir() == no_data.resolve()
    assert len(server.ranges) == 1  # downloaded once, then found in the cache
    expected_images, expected_labels = _archive()[1]["test"]
    np.testing.assert_array_equal(y.numpy(), expected_labels[:3])
    x_direct, _ = cifar10_tensors("test", 3, no_data)
    torch.testing.assert_close(x, x_direct, rtol=0, atol=0)
    np.testing.assert_array_equal(load_cifar10("test", no_data, n=3)[0], expected_images[:3])


def test_lookup_order(no_data, tmp_path, monkeypatch):
    def holding(folder: Path) -> Path:
        (folder / "cifar10").mkdir(parents=True)
        return folder

    monkeypatch.setenv("AIMC_NO_DOWNLOAD", "1")
    cache = no_data
    _npz(cache / "cifar10" / "cifar10-train.npz", np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.uint8), False)
    _npz(cache / "cifar10" / "cifar10-test.npz", np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.uint8), False)
    assert find_data_dir() == cache.resolve()
    parent_shared = holding(tmp_path / "work" / "shared" / "data")  # ../shared/data
    assert find_data_dir() == parent_shared.resolve()
    local_shared = holding(tmp_path / "work" / "inner" / "shared" / "data")  # ./shared/data
    assert find_data_dir() == local_shared.resolve()
    env = holding(tmp_path / "env")
    monkeypatch.setenv("AIMC_DATA", str(env))
    assert find_data_dir() == env.resolve()
    arg = holding(tmp_path / "arg")
    assert find_data_dir(arg) == arg.resolve()
    with pytest.raises(DataNotFoundError, match="aimc data fetch cifar10 --data-dir"):
        find_data_dir(tmp_path / "nothing")  # a folder given is the only one used


def test_cli_data_fetch(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dl, "fetch_cifar10", functools.partial(dl.fetch_cifar10, checksum=_md5(server.payload)))
    root = tmp_path / "d"
    assert main(["data", "fetch", "cifar10", "--data-dir", str(root), "--url", server.url, "--quiet"]) == 0
    assert str(root / "cifar10") in capsys.readouterr().out
    assert _leftovers(root / "cifar10") == ["cifar10-test.npz", "cifar10-train.npz"]
    server.payload = server.payload[:-1]  # a mirror serving a bad file: error exit, nothing kept
    assert main(["data", "fetch", "cifar10", "--data-dir", str(tmp_path / "e"), "--url", server.url, "--quiet"]) == 2
    assert "expected" in capsys.readouterr().err
    assert _leftovers(tmp_path / "e" / "cifar10") == []
