"""Dataset downloads against a local HTTP server: fresh, resumed with Range, a server without Range,
checksum mismatch, recorded digests, and the CLI; plus the name resolution of downloadable files."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.harness import BenchmarkConfig
from rledit_env import data_files
from rledit_env.data_files import DataFile
from rledit_env.datasets import load_dataset, resolve_dataset
from rledit_env.download import ChecksumError, download, fetch_dataset

# A small but real-format file: 60 ZsRE records, so that the download also loads.
RECORDS = [
    {
        "subject": f"S{i}",
        "src": f"What is S{i}?",
        "rephrase": f"S{i} is what?",
        "alt": f"A{i}",
        "answers": ["B"],
    }
    for i in range(60)
]
PAYLOAD = json.dumps(RECORDS, indent=1).encode()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; honours ``Range: bytes=N-`` unless the server says not to."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append(self.headers.get("Range"))
        start = 0
        ranged = self.headers.get("Range") and server.ranges
        if ranged:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
        body = PAYLOAD[start:]
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.ranges = [], True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/zsre_test.json"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def entry(monkeypatch, tmp_path, server):
    """A downloadable catalogue entry served by the test server, the cache in tmp_path."""
    monkeypatch.setenv("RLEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLEDIT_DATA_DIR", raising=False)
    item = DataFile("zsre-test", "zsre/zsre_test.json", "test file", "none", url=server.url, sha256=SHA)
    monkeypatch.setitem(data_files.KNOWN_DATASETS, item.name, item)
    return item


def test_fresh_download_checks_the_pinned_digest(entry, server):
    fetched = fetch_dataset(entry.name, progress=False)
    assert fetched.path.read_bytes() == PAYLOAD and fetched.sha256 == SHA
    assert "pinned" in fetched.status and server.requests == [None]
    assert not fetched.path.with_name(fetched.path.name + ".part").exists()
    assert len(load_dataset(entry.name)) == 60  # the name now resolves to the download


def test_resume_requests_only_the_missing_bytes(entry, server, tmp_path):
    dest = entry.path()
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD[:1000])  # an interrupted earlier attempt
    assert download(server.url, dest, SHA, progress=False) == SHA
    assert server.requests == ["bytes=1000-"] and dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_refetching(entry, server):
    dest = entry.path()
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(PAYLOAD)
    assert download(server.url, dest, SHA, progress=False) == SHA  # the server answers 416
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_restarts_the_part(entry, server):
    server.ranges = False
    dest = entry.path()
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(b"garbage that must not stay at the front")
    assert download(server.url, dest, SHA, progress=False) == SHA
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(entry, server, monkeypatch):
    wrong = DataFile(entry.name, entry.file, "", "", url=server.url, sha256="0" * 64)
    monkeypatch.setitem(data_files.KNOWN_DATASETS, entry.name, wrong)
    with pytest.raises(ChecksumError, match="not the expected"):
        fetch_dataset(entry.name, progress=False)
    assert list(entry.path().parent.iterdir()) == [entry.path().with_name(".zsre_test.json.lock")]


def test_unpinned_digest_is_recorded_then_verified(entry, server, monkeypatch):
    unpinned = DataFile(entry.name, entry.file, "", "", url=server.url)
    monkeypatch.setitem(data_files.KNOWN_DATASETS, entry.name, unpinned)
    first = fetch_dataset(entry.name, progress=False)
    assert "recorded" in first.status
    record = first.path.with_name(first.path.name + ".sha256")
    assert record.read_text().split()[0] == SHA
    again = fetch_dataset(entry.name, progress=False)
    assert "recorded at first download" in again.status and len(server.requests) == 1  # no refetch
    first.path.write_bytes(PAYLOAD[:-1] + b" ")  # corrupted afterwards
    with pytest.raises(ChecksumError, match="recorded at first download"):
        fetch_dataset(entry.name, progress=False)


def test_missing_download_says_how_to_get_it(entry):
    with pytest.raises(FileNotFoundError, match="rledit data download zsre-test"):
        resolve_dataset("zsre-test")
    # A configuration naming it stops at validation, before any model loads.
    with pytest.raises(FileNotFoundError, match="rledit data download zsre-eval"):
        BenchmarkConfig(agents=["noedit"], dataset="zsre-eval", train_dataset="zsre-train").validate()


def test_cli_download_and_list(entry, server, capsys):
    assert main(["data", "download", entry.name, "-q"]) == 0
    assert "pinned" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("zsre-test"))
    assert "present" in line
    assert main(["data", "download", "fever-train", "-q"]) == 2  # no direct URL: an error, not a crash
    assert "Google Drive" in capsys.readouterr().err


def test_every_paper_configuration_names_known_datasets():
    configs = Path(__file__).parents[1] / "experiments" / "configs"
    for path in configs.glob("paper-*.json"):
        config = BenchmarkConfig.from_file(path)
        assert data_files.data_file(config.dataset) is not None, path.name
        assert config.train_dataset is None or data_files.data_file(config.train_dataset) is not None
