"""One atomic writer for every output file: whole files only, the usual permissions, strict JSON."""

import json
import os
import stat

import pytest
import torch


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_usual_permissions_not_private_ones(tmp_path, umask_022):
    from unipts.atomic import save_torch_atomic, staged, write_json_atomic, write_text_atomic
    from unipts.pipeline.builders import AtomicCheckpointIO

    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    write_text_atomic(tmp_path / "results.csv", "a\n1\n")
    save_torch_atomic({"w": torch.ones(1)}, tmp_path / "final.ckpt")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.ckpt")
    with staged(tmp_path / "export", ["model.pt", "model.onnx"]) as tmp:
        for path in tmp.values():
            path.write_bytes(b"x")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_json_never_holds_nan_or_infinity(tmp_path):
    from unipts.atomic import write_json_atomic

    target = tmp_path / "export.json"
    nulled = write_json_atomic(target, {"top1": float("nan"), "ok": 0.5, "wall_s": {"total": float("inf")},
                                        "layers": [{"sparsity": float("-inf")}]})
    assert nulled == ["top1", "wall_s.total", "layers[0].sparsity"]
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert data == {"top1": None, "ok": 0.5, "wall_s": {"total": None}, "layers": [{"sparsity": None}]}


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    from unipts.atomic import remove_leftovers

    (tmp_path / ".last.ckpt.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    assert [p.name for p in remove_leftovers(tmp_path)] == [".last.ckpt.x1y2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert remove_leftovers(tmp_path / "missing") == []
