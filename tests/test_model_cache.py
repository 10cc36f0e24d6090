"""The course model cache in a classroom: built once before class, safe when two students build it at once, and a
clear error on a read-only share that was never built."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import csreft_lite as cl
from csreft_lite import models

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for the 20-second dequantization: a small but complete cache (files + manifest with their sizes), written
# slowly so that two builders overlap, and signed with the builder's name so the test can tell whose cache survived.
FAKE_BUILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from csreft_lite import models

    name, delay = sys.argv[1], float(sys.argv[2])

    def build_files(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
        (folder / "builder.txt").write_text(name)
        time.sleep(delay)  # still building while the other builder finishes
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
        (folder / "manifest.json").write_text(json.dumps({"format": models._CACHE_FORMAT, "sizes": sizes}))

    models._build_files = build_files
    models.main(["--build-cache", sys.argv[3]])
""")


def _builder(name: str, delay: float, share: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", FAKE_BUILD, name, str(delay), str(share)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_students_building_at_once_keep_the_first_finished_cache(tmp_path):
    share = tmp_path / "share"
    slow, fast = _builder("slow", 6.0, share), _builder("fast", 0.5, share)
    assert fast.wait(timeout=120) == 0, fast.stderr.read()
    target = models.course_model_cache(share)
    assert (target / "builder.txt").read_text() == "fast"
    inode = (target / "model.safetensors").stat().st_ino
    with open(target / "model.safetensors", "rb") as reader:  # a student loading it while the other build ends
        assert slow.wait(timeout=120) == 0, slow.stderr.read()
        assert reader.read() == b"w" * 1000
    assert (target / "builder.txt").read_text() == "fast", "the second builder replaced the finished cache"
    assert (target / "model.safetensors").stat().st_ino == inode
    assert [p.name for p in share.iterdir()] == [target.name], "a temporary folder was left behind"
    assert "export CSREFT_CACHE=" in fast.stdout.read() + slow.stdout.read()
    models._check_cache(target)


def test_a_shared_cache_is_readable_by_everyone(tmp_path, monkeypatch):
    def build_files(folder):
        (folder / "manifest.json").write_text(json.dumps({"format": models._CACHE_FORMAT, "sizes": {}}))

    monkeypatch.setattr(models, "_build_files", build_files)
    target = models.build_cache(tmp_path / "share")
    assert target.stat().st_mode & 0o055 == 0o055, "mkdtemp's private mode 0700 would lock the other students out"


def test_rebuild_replaces_the_cache_and_leaves_nothing_aside(tmp_path, monkeypatch):
    builds = []

    def build_files(folder):
        builds.append(folder)
        (folder / "n.txt").write_text(str(len(builds)))
        (folder / "manifest.json").write_text(json.dumps({"format": models._CACHE_FORMAT, "sizes": {"n.txt": 1}}))

    monkeypatch.setattr(models, "_build_files", build_files)
    target = models.build_cache(tmp_path)
    assert models.build_cache(tmp_path) == target and len(builds) == 1, "a valid cache is used, not rebuilt"
    models.build_cache(tmp_path, rebuild=True)
    assert (target / "n.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder unwritable: chmod for a normal user; as root (who ignores modes, e.g. in a container) creating
    anything inside it fails with EACCES, as it does on a read-only share."""
    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        if os.geteuid() == 0:
            real_mkdir = os.mkdir

            def mkdir(path, *args, **kwargs):
                if Path(path).resolve().is_relative_to(folder.resolve()):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_mkdir(path, *args, **kwargs)

            monkeypatch.setattr(os, "mkdir", mkdir)
        return folder

    return make


def test_a_read_only_share_never_built_says_how_to_build_it(tmp_path, monkeypatch, read_only):
    share = read_only(tmp_path / "share")
    monkeypatch.setenv("CSREFT_CACHE", str(share))
    try:
        with pytest.raises(cl.CourseModelError, match="has not been built") as err:
            cl.load_course_model()
    finally:
        share.chmod(0o755)
    message = str(err.value)
    assert f"python -m csreft_lite.models --build-cache {share}" in message and "CSREFT_CACHE" in message
    assert list(share.iterdir()) == []


def test_a_read_only_share_that_was_built_loads_without_writing(tmp_path, monkeypatch, read_only):
    def build_files(folder):
        (folder / "manifest.json").write_text(json.dumps({"format": models._CACHE_FORMAT, "sizes": {}}))

    monkeypatch.setattr(models, "_build_files", build_files)
    target = models.build_cache(tmp_path / "share")
    read_only(tmp_path / "share")

    def no_write(*args, **kwargs):
        raise AssertionError("a built cache must not be written again")

    monkeypatch.setattr(models, "_write_cache", no_write)
    try:
        assert models.build_cache(tmp_path / "share") == target
    finally:
        (tmp_path / "share").chmod(0o755)
