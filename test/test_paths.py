"""cldyn_ros.paths: the search order ament index -> install prefix -> source checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cldyn_ros import paths


def _install(prefix: Path, files: dict[str, bytes], ament_marker: bool = True) -> Path:
    """A fake install prefix holding share/cldyn_ros/<files> (+ the ament index marker)."""
    share = prefix / "share" / "cldyn_ros"
    share.mkdir(parents=True)
    (share / "package.xml").write_text("<package format='3'><name>cldyn_ros</name></package>")
    for relative, content in files.items():
        (share / relative).parent.mkdir(parents=True, exist_ok=True)
        (share / relative).write_bytes(content)
    if ament_marker:
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "cldyn_ros"
        marker.parent.mkdir(parents=True)
        marker.touch()
    return share


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No ament index and an empty install prefix: only the source checkout is left."""
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    empty = tmp_path / "empty_prefix"
    empty.mkdir()
    monkeypatch.setattr(paths, "_prefix_share_directories", lambda: [empty / "share/cldyn_ros"])
    return tmp_path


def test_source_checkout_fallback(isolated, repo_root):
    assert paths.share_directory() is None
    assert paths.search_directories() == [repo_root]
    assert paths.find_share_file("package.xml") == repo_root / "package.xml"


def test_missing_file_lists_every_place_searched(isolated, repo_root):
    with pytest.raises(FileNotFoundError) as error:
        paths.find_share_file("models/no_such_model.pt")
    message = str(error.value)
    assert "ament index" in message
    assert str(isolated / "empty_prefix/share/cldyn_ros/models/no_such_model.pt") in message
    assert str(repo_root / "models/no_such_model.pt") in message


def test_install_prefix_before_source(isolated, monkeypatch, repo_root):
    share = _install(isolated / "venv", {"models/cldyn_default.pt": b"weights"})
    monkeypatch.setattr(paths, "_prefix_share_directories", lambda: [share])
    assert paths.share_directory() == share
    assert paths.default_model_path() == share / "models/cldyn_default.pt"
    # A file only the checkout has is still found there.
    assert paths.find_share_file("setup.py") == repo_root / "setup.py"


def test_prefix_directories_follow_the_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(paths.sys, "prefix", str(tmp_path / "a"))
    monkeypatch.setattr(paths.sysconfig, "get_path", lambda name: str(tmp_path / "b"))
    assert paths._prefix_share_directories() == [
        tmp_path / "a/share/cldyn_ros",
        tmp_path / "b/share/cldyn_ros",
    ]
    monkeypatch.setattr(paths.sysconfig, "get_path", lambda name: str(tmp_path / "a"))
    assert paths._prefix_share_directories() == [tmp_path / "a/share/cldyn_ros"]


def test_ament_index_comes_first(isolated, monkeypatch):
    pytest.importorskip("ament_index_python", reason="ament_index_python not installed")
    prefix_share = _install(isolated / "venv", {"models/cldyn_default.pt": b"venv"})
    ament_share = _install(isolated / "ws/install", {"models/cldyn_default.pt": b"ament"})
    monkeypatch.setattr(paths, "_prefix_share_directories", lambda: [prefix_share])
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(isolated / "ws/install"))
    assert paths.share_directory() == ament_share
    assert paths.default_model_path().read_bytes() == b"ament"
    assert paths.search_directories()[:2] == [ament_share, prefix_share]


def test_ament_index_without_the_package_is_skipped(isolated, monkeypatch, repo_root):
    pytest.importorskip("ament_index_python", reason="ament_index_python not installed")
    unrelated = isolated / "other_ws"
    (unrelated / "share/ament_index/resource_index/packages").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(unrelated))
    assert paths.share_directory() is None
    assert paths.find_share_file("package.xml") == repo_root / "package.xml"


def test_ament_index_python_is_optional(isolated, monkeypatch, repo_root):
    import builtins

    real_import = builtins.__import__

    def no_ament(name, *args, **kwargs):
        if name.startswith("ament_index_python"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ament)
    assert paths._ament_share_directory() is None
    assert paths.find_share_file("package.xml") == repo_root / "package.xml"


def test_absolute_paths_are_rejected():
    with pytest.raises(ValueError):
        paths.find_share_file("/etc/passwd")
