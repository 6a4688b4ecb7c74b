"""Real download code against a local HTTP server (127.0.0.1) serving archives in the real layouts."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.apps import DecathlonDataset

from medseg.core.errors import MedsegError
from medseg.data import datalist, download
from medseg.data.synthetic import generate_task
from tests.conftest import ROOT, SHARED_DATA


class ArchiveServer:
    """Serves byte blobs with HTTP Range support; can cut a file's first transfer short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_first.pop(path, None)
                self.wfile.write(body[:cut] if cut is not None else body)
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = ArchiveServer()
    yield s
    s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_bytes(root: Path, arcname: str, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=arcname)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def spleen_archive(tmp_path_factory) -> bytes:
    """A tiny Task09_Spleen.tar in the official layout, macOS '._' files included."""
    work = tmp_path_factory.mktemp("spleen")
    task = generate_task(work, cases=3, test_cases=1, seed=2)
    meta = json.loads((task / "dataset.json").read_text())
    meta.update(name="Spleen", labels={"0": "background", "1": "spleen"})
    (task / "dataset.json").write_text(json.dumps(meta))
    (task / "imagesTr" / "._synthetic_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (task / "._dataset.json").write_bytes(b"\x00\x05\x16\x07")
    return tar_bytes(task, "Task09_Spleen")


def serve_msd(server: ArchiveServer, folder: str, data: bytes) -> None:
    server.files[f"/{folder}.tar"] = data


def test_msd_download_verifies_extracts_and_loads(server, spleen_archive, tmp_path):
    serve_msd(server, "Task09_Spleen", spleen_archive)
    task = download.fetch_msd("spleen", tmp_path, base_url=server.url, md5=md5(spleen_archive))
    assert task == tmp_path / "Task09_Spleen" and (task / "dataset.json").is_file()
    assert not list(task.rglob("._*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".downloads", "Task09_Spleen"]
    assert not list((tmp_path / ".downloads").iterdir())  # archive removed after extraction
    cases = datalist.msd_datalist(task).cases
    assert len(cases) == 3 and all(Path(c["image"]).is_file() for c in cases.values())


def test_second_run_is_a_noop(server, spleen_archive, tmp_path, capsys):
    serve_msd(server, "Task09_Spleen", spleen_archive)
    download.fetch_msd("spleen", tmp_path, base_url=server.url, md5=md5(spleen_archive))
    before = len(server.requests)
    download.fetch_msd("Task09_Spleen", tmp_path, base_url=server.url, md5=md5(spleen_archive))
    assert len(server.requests) == before
    assert "already present" in capsys.readouterr().out


def test_interrupted_download_resumes_with_range(server, spleen_archive, tmp_path):
    serve_msd(server, "Task09_Spleen", spleen_archive)
    half = len(spleen_archive) // 2
    server.cut_first["/Task09_Spleen.tar"] = half
    with pytest.raises(MedsegError, match="interrupted"):
        download.fetch_msd("spleen", tmp_path, base_url=server.url, md5=md5(spleen_archive))
    partial = tmp_path / ".downloads" / "Task09_Spleen.tar.partial"
    assert partial.stat().st_size == half and not (tmp_path / "Task09_Spleen").exists()
    download.fetch_msd("spleen", tmp_path, base_url=server.url, md5=md5(spleen_archive), keep_archive=True)
    assert server.requests[-1] == ("/Task09_Spleen.tar", f"bytes={half}-")
    assert md5((tmp_path / ".downloads" / "Task09_Spleen.tar").read_bytes()) == md5(spleen_archive)
    assert (tmp_path / "Task09_Spleen" / "dataset.json").is_file()


def test_wrong_md5_is_refused_and_leaves_no_task(server, spleen_archive, tmp_path):
    serve_msd(server, "Task09_Spleen", spleen_archive)
    with pytest.raises(MedsegError, match="MD5"):
        download.fetch_msd("spleen", tmp_path, base_url=server.url)  # official MD5 cannot match
    assert not (tmp_path / "Task09_Spleen").exists()
    assert not list((tmp_path / ".downloads").iterdir())


def test_path_traversal_member_is_refused(server, tmp_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("evilsrc")
    task = generate_task(work, cases=1, test_cases=0, seed=3)
    evil = tar_bytes(task, "Task09_Spleen", extra={"../../escaped.txt": b"owned"})
    serve_msd(server, "Task09_Spleen", evil)
    out = tmp_path / "data"
    with pytest.raises(MedsegError, match="unsafe"):
        download.fetch_msd("spleen", out, base_url=server.url, md5=md5(evil))
    assert not (out / "Task09_Spleen").exists() and not list(tmp_path.rglob("escaped.txt"))
    assert not list(out.glob(".*extracting"))


def test_multimodal_4d_task(server, tmp_path, tmp_path_factory):
    """A Task05_Prostate-like archive: 4D channel-last images (T2, ADC), loaded as 2 channels."""
    work = tmp_path_factory.mktemp("prostate") / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (work / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    training = []
    for i in range(5):
        img = rng.normal(size=(24, 24, 8, 2)).astype(np.float32)
        lab = np.zeros((24, 24, 8), np.uint8)
        lab[8:16, 8:16, 2:6] = 1
        lab[10:14, 10:14, 3:5] = 2
        affine = np.diag([0.6, 0.6, 3.6, 1])
        nib.save(nib.Nifti1Image(img, affine), work / "imagesTr" / f"prostate_{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), work / "labelsTr" / f"prostate_{i:02d}.nii.gz")
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    real = SHARED_DATA / "msd_dataset_json" / "Task05_Prostate" / "dataset.json"
    meta = json.loads(real.read_text()) if real.exists() else {"modality": {"0": "T2", "1": "ADC"},
                                                               "labels": {"0": "background", "1": "PZ", "2": "TZ"}}
    meta.update(training=training, test=[], numTraining=5, numTest=0)
    (work / "dataset.json").write_text(json.dumps(meta))
    (work / "._dataset.json").write_bytes(b"junk")
    data = tar_bytes(work, "Task05_Prostate")
    serve_msd(server, "Task05_Prostate", data)
    task = download.fetch_msd("prostate", tmp_path, base_url=server.url, md5=md5(data))

    from monai.transforms import LoadImaged
    loaded = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(datalist.msd_datalist(task).cases["prostate_00"])
    assert loaded["image"].shape == (2, 24, 24, 8) and loaded["label"].shape == (1, 24, 24, 8)


def test_medmnist_download_uses_package_info(server, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("val", 2), ("test", 3))}
    arrays.update({f"{s}_labels": rng.integers(0, 2, (n, 1), dtype=np.uint8) for s, n in (("train", 6), ("val", 2), ("test", 3))})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    server.files["/pneumoniamnist.npz"] = buf.getvalue()
    path = download.fetch_medmnist("pneumoniamnist", tmp_path, base_url=server.url, md5=md5(buf.getvalue()))
    assert path == tmp_path / "medmnist" / "pneumoniamnist.npz"
    with np.load(path) as npz:
        assert npz["train_images"].shape == (6, 28, 28)
    with pytest.raises(MedsegError, match="sizes"):
        download.fetch_medmnist("organmnist3d", tmp_path, size=128)
    assert download.medmnist_filename("pathmnist", 64) == "pathmnist_64.npz"
    assert download.medmnist_sizes("organmnist3d") == [28, 64]
    # URLs and MD5s come from the installed medmnist package, not from a copy of ours
    from medmnist import INFO
    assert download.medmnist_flags()["pathmnist"]["MD5"] == INFO["pathmnist"]["MD5"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The script as a user runs it, in a fresh interpreter."""
    return subprocess.run([sys.executable, "scripts/download_data.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """The script's ``main(argv)`` in this process: the same code without a second torch/MONAI import."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("download_data", ROOT / "scripts" / "download_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_cli_unknown_task_lists_valid_names(tmp_path):
    proc = run_cli_here("--dataset", "msd", "--task", "kidney", "--output", str(tmp_path))
    assert proc.returncode == 2 and "unknown MSD task 'kidney'" in proc.stderr and "spleen" in proc.stderr
    proc = run_cli_here("--dataset", "medmnist", "--task", "nomnist", "--output", str(tmp_path))
    assert proc.returncode == 2 and "pathmnist" in proc.stderr


def test_cli_mirror_with_wrong_archive_fails_cleanly(server, spleen_archive, tmp_path):
    serve_msd(server, "Task09_Spleen", spleen_archive)
    proc = run_cli("--dataset", "msd", "--task", "spleen", "--output", str(tmp_path), "--base-url", server.url)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert DecathlonDataset.md5["Task09_Spleen"] in proc.stderr and not (tmp_path / "Task09_Spleen").exists()


def test_cli_lists():
    msd = run_cli_here("--dataset", "msd", "--list").stdout
    assert all(name in msd for name in download.MSD_TASKS) and "Task01_BrainTumour" in msd
    med = run_cli_here("--dataset", "medmnist", "--list").stdout
    assert "organmnist3d" in med and "chestmnist" in med and "multi-label" in med
