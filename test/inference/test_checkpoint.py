"""Checkpoint files: round trip, safe loading, and one clear error for every bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_loaded, make_model, random_inputs, task_vectors

from cldyn_ros.inference.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    NO_TASK,
    CheckpointError,
    LoadedModel,
    load_checkpoint,
    save_checkpoint,
)
from cldyn_ros.model import CLDyN


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return make_loaded()


@pytest.fixture
def saved(tmp_path: Path, loaded: LoadedModel) -> Path:
    """A valid checkpoint of :func:`loaded` with some metadata."""
    return save_checkpoint(
        tmp_path / "model.pt",
        loaded.model,
        loaded.task_vectors,
        {"trained_on": "unit test", "training": {"steps": 3}},
    )


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_variant(saved: Path, name: str, **changes: object) -> Path:
    """A copy of the checkpoint ``saved`` with some top-level entries replaced."""
    path = saved.with_name(name)
    torch.save({**_payload(saved), **changes}, path)
    return path


def _load_error(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    error = info.value
    assert str(path) in str(error), "the message must name the file"
    assert error.path == Path(path)
    return error


# ------------------------------------------------------------------ round trip


def test_round_trip_keeps_weights(saved, loaded):
    back = load_checkpoint(saved)
    original = loaded.model.state_dict()
    restored = back.model.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key


def test_round_trip_keeps_task_vectors(saved, loaded):
    back = load_checkpoint(saved)
    assert back.task_names == ["detection", "segmentation"]
    for name, vector in loaded.task_vectors.items():
        assert torch.equal(back.task_vectors[name], vector)
        assert back.task_vectors[name].dtype == torch.float32


def test_round_trip_keeps_metadata_and_adds_creation_time(saved):
    back = load_checkpoint(saved)
    assert back.metadata["trained_on"] == "unit test"
    assert back.metadata["training"] == {"steps": 3}
    assert "created" in back.metadata
    assert back.path == saved


def test_round_trip_keeps_config(tmp_path):
    model = make_model(num_blocks=3, branches=2)
    path = save_checkpoint(tmp_path / "l3.pt", model, task_vectors(("a",)))
    back = load_checkpoint(path)
    assert back.model.config == model.config
    assert len(back.model.rsc.blocks_ir) == 2


def test_round_trip_without_rsc(tmp_path):
    model = make_model(with_rsc=False)
    back = load_checkpoint(save_checkpoint(tmp_path / "vfn.pt", model))
    assert back.model.rsc is None
    assert back.task_vectors == {}


def test_loaded_model_is_in_eval_mode_and_fuses_like_the_original(saved, loaded):
    back = load_checkpoint(saved)
    assert not back.model.training
    ir, vis = random_inputs(1, 17, 23)
    tasks = torch.stack([loaded.task_vectors["detection"]])
    with torch.no_grad():
        assert torch.equal(back.model(ir, vis), loaded.model(ir, vis))
        assert torch.equal(
            back.model.fuse_tasks(ir, vis, tasks), loaded.model.fuse_tasks(ir, vis, tasks)
        )


def test_file_layout_is_a_plain_weights_only_dict(saved):
    payload = _payload(saved)
    assert payload["format"] == FORMAT
    assert payload["format_version"] == FORMAT_VERSION
    assert set(payload) == {
        "format",
        "format_version",
        "config",
        "state_dict",
        "task_vectors",
        "metadata",
    }


def test_save_is_atomic_and_leaves_no_temporary_file(saved):
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_save_creates_parent_folders(tmp_path, loaded):
    path = save_checkpoint(tmp_path / "a" / "b" / "m.pt", loaded.model)
    assert path.is_file()


def test_save_stores_float32_cpu_task_vectors(tmp_path, loaded):
    vectors = {"half": torch.randn(256).half()}
    path = save_checkpoint(tmp_path / "m.pt", loaded.model, vectors)
    stored = _payload(path)["task_vectors"]["half"]
    assert stored.dtype == torch.float32


# ------------------------------------------------------------------ rejected at save


def test_none_is_rejected_as_a_task_name_at_save(tmp_path, loaded):
    with pytest.raises(ValueError, match="none"):
        save_checkpoint(tmp_path / "m.pt", loaded.model, {NO_TASK: torch.zeros(256)})
    assert not (tmp_path / "m.pt").exists()


def test_wrong_sized_task_vector_is_rejected_at_save(tmp_path, loaded):
    with pytest.raises(ValueError, match="shape"):
        save_checkpoint(tmp_path / "m.pt", loaded.model, {"det": torch.zeros(128)})


# ------------------------------------------------------------------ safe loading


class _Sneaky:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_uses_weights_only_and_refuses_arbitrary_objects(saved):
    marker = saved.with_name("pwned")
    path = _write_variant(saved, "sneaky.pt", metadata={"note": _Sneaky(marker)})
    error = _load_error(path)
    assert not marker.exists(), "the pickle was executed"
    assert "corrupt" in error.problem or "weights" in error.problem.lower()


def test_load_calls_torch_load_with_weights_only(saved, monkeypatch):
    seen: dict = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(saved)
    assert seen.get("weights_only") is True


# ------------------------------------------------------------------ one error per problem


def test_missing_file(tmp_path):
    error = _load_error(tmp_path / "nope.pt")
    assert "not found" in error.problem


def test_directory_instead_of_file(tmp_path):
    error = _load_error(tmp_path)
    assert "not a file" in error.problem


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert "empty" in _load_error(path).problem


def test_truncated_file(saved):
    data = saved.read_bytes()
    path = saved.with_name("half.pt")
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _load_error(path).problem


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "corrupt" in _load_error(path).problem



@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a model\n", id="text"),
        pytest.param(b"hello", id="hello"),
        pytest.param(b"\x80\x02", id="pickle-header-only"),
    ],
)
def test_short_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    assert "corrupt" in _load_error(path).problem


@pytest.mark.parametrize(
    "fraction",
    [0.01, 0.25, 0.75, 0.99],
)
def test_file_truncated_anywhere(saved, fraction):
    data = saved.read_bytes()
    path = saved.with_name("cut.pt")
    path.write_bytes(data[: int(len(data) * fraction)])
    assert "truncated or corrupt" in _load_error(path).problem


def test_plain_state_dict_is_not_a_cldyn_checkpoint(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save(CLDyN().state_dict(), path)
    assert f"not a {FORMAT} file" in _load_error(path).problem


def test_torch_file_holding_a_list_is_not_a_cldyn_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    assert f"not a {FORMAT} file" in _load_error(path).problem


def test_newer_format_version(saved):
    path = _write_variant(saved, "future.pt", format_version=FORMAT_VERSION + 1)
    error = _load_error(path)
    assert "newer" in error.problem and str(FORMAT_VERSION + 1) in error.problem


def test_weights_that_do_not_fit_the_config(saved):
    config = {**_payload(saved)["config"], "num_blocks": 3}
    path = _write_variant(saved, "mismatch.pt", config=config)
    assert "incompatible weights" in _load_error(path).problem


def test_unknown_config_setting(saved):
    config = {**_payload(saved)["config"], "num_heads": 8}
    path = _write_variant(saved, "unknown.pt", config=config)
    error = _load_error(path)
    assert "incompatible weights" in error.problem and "num_heads" in error.problem


def test_missing_state_dict(saved):
    payload = _payload(saved)
    del payload["state_dict"]
    path = saved.with_name("no_weights.pt")
    torch.save(payload, path)
    assert "incompatible weights" in _load_error(path).problem


@pytest.mark.parametrize(
    "vector",
    [torch.zeros(128), torch.zeros(2, 256), torch.full((256,), float("nan"))],
    ids=["short", "matrix", "nan"],
)
def test_malformed_task_vector(saved, vector):
    path = _write_variant(saved, "bad_vector.pt", task_vectors={"detection": vector})
    error = _load_error(path)
    assert "task vector 'detection' is malformed" in error.problem


@pytest.mark.parametrize(
    "task_vectors_entry",
    [{"detection": [0.0] * 256}, {"detection": "abc"}, torch.zeros(256)],
    ids=["list-vector", "string-vector", "not-a-dict"],
)
def test_non_tensor_task_vectors(saved, task_vectors_entry):
    path = _write_variant(saved, "bad_vectors.pt", task_vectors=task_vectors_entry)
    _load_error(path)


@pytest.mark.parametrize("metadata", [[1, 2], "abc"], ids=["list", "string"])
def test_non_dict_metadata(saved, metadata):
    path = _write_variant(saved, "bad_meta.pt", metadata=metadata)
    _load_error(path)


def test_reserved_task_name_in_file_is_rejected(saved):
    vectors = {**_payload(saved)["task_vectors"], NO_TASK: torch.zeros(256)}
    path = _write_variant(saved, "reserved.pt", task_vectors=vectors)
    assert NO_TASK in _load_error(path).problem


def test_error_message_format(tmp_path):
    error = CheckpointError(tmp_path / "x.pt", "something broke")
    assert str(error) == f"cannot use model file '{tmp_path / 'x.pt'}': something broke"
    assert error.problem == "something broke"


@pytest.mark.parametrize("name", ["cldyn_default.pt", "cldyn_tasks.pt"])
def test_shipped_models_load(name):
    """The checkpoints in models/ carry the file-format name every release has written."""
    path = Path(__file__).resolve().parents[2] / "models" / name
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT
    load_checkpoint(path)


def test_files_from_the_misnamed_format_still_load(tmp_path, saved):
    path = _write_variant(saved, "renamed.pt", format="cldyn_ros.inference.checkpoint")
    load_checkpoint(path)
