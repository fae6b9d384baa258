"""scripts/prepare_demo_data.py: shared-data mode and the download path (local HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest
import soundfile as sf

from speechkit.cli import prepare_demo_data as prep


@pytest.fixture()
def fake_librispeech(tmp_path, shared_data):
    """A LibriSpeech-layout tar.gz of real speech (3 speakers x 3 FLAC files of 1 s)."""
    lines = (shared_data / "lists/librispeech_test_other_train_all.txt").read_text().split("\n")
    by_spk: dict[str, list[str]] = {}
    for line in filter(None, lines):
        spk, path = line.split()
        by_spk.setdefault(spk, []).append(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for spk in sorted(by_spk)[:3]:
            for i, path in enumerate(by_spk[spk][:3]):
                wav, sr = sf.read(shared_data / path, frames=16000, dtype="float32")
                flac = io.BytesIO()
                sf.write(flac, wav, sr, format="FLAC")
                num = spk[2:]
                info = tarfile.TarInfo(f"LibriSpeech/test-other/{num}/100/{num}-100-{i:04d}.flac")
                info.size = flac.getbuffer().nbytes
                flac.seek(0)
                tar.addfile(info, flac)
    archive = tmp_path / "serve" / "test-other.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(buf.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=archive.parent)
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/test-other.tar.gz"
    yield url, hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()


def test_download_path_builds_lists(tmp_path, fake_librispeech):
    url, md5 = fake_librispeech
    out = tmp_path / "demo"
    args = [
        "--download",
        "--url",
        url,
        "--md5",
        md5,
        "--out",
        str(out),
        "--speakers",
        "3",
        "--utterances",
        "3",
    ]
    assert prep.main(args) == 0
    train = (out / "train_list.txt").read_text().split("\n")[:-1]
    trials = [ln.split() for ln in (out / "trials.txt").read_text().split("\n")[:-1]]
    assert len(train) == 9 and len({ln.split()[0] for ln in train}) == 3
    assert sum(t[0] == "1" for t in trials) == 9 and sum(t[0] == "0" for t in trials) == 9
    for _, a, b in trials:
        assert sf.info(out / "data" / a).frames == 16000 and (out / "data" / b).is_file()
    # a second run reuses the verified archive
    assert prep.main(args) == 0


def test_download_checksum_mismatch(tmp_path, fake_librispeech, capsys):
    url, _ = fake_librispeech
    out = tmp_path / "demo"
    assert prep.main(["--download", "--url", url, "--md5", "0" * 32, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "expected " + "0" * 32 in err
    assert not list((out / "downloads").glob("*"))  # nothing partial is left behind


def test_download_unreachable(tmp_path, capsys):
    assert (
        prep.main(
            [
                "--download",
                "--url",
                "http://127.0.0.1:9/x.tar.gz",
                "--md5",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "download of http://127.0.0.1:9/x.tar.gz failed" in capsys.readouterr().err


def test_shared_mode_links_lists(tmp_path, shared_data):
    out = tmp_path / "demo"
    assert prep.main(["--out", str(out), "--shared", str(shared_data)]) == 0
    assert (out / "data").resolve() == shared_data.resolve()
    first = (out / "train_list.txt").read_text().split("\n")[0].split()
    assert (out / "data" / first[1]).is_file()
