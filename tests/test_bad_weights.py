"""Every command that reads a weights or checkpoint file: a bad file is one line naming it and what is wrong
with it, exit code 2, nothing of a pickle executed (issue 18)."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from larp.cli import main
from larp.train.checkpoint import CheckpointError, load_weights, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates the marker directory: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain)."""
    good = tmp_path / "good.safetensors"
    save_file({"tokenizer.w": torch.zeros(256)}, str(good))
    blob = good.read_bytes()
    files = {
        "pickle": (tmp_path / "pickle.safetensors", "pickle"),
        "torch-zip": (tmp_path / "torch.safetensors", "torch"),
        "truncated": (tmp_path / "truncated.safetensors", "truncated"),
        "short": (tmp_path / "short.safetensors", "truncated"),
        "empty": (tmp_path / "empty.safetensors", "empty"),
        "text": (tmp_path / "text.safetensors", "text"),
        "directory": (tmp_path / "dir.safetensors", "directory"),
        "missing": (tmp_path / "missing.safetensors", "not found"),
    }
    files["pickle"][0].write_bytes(pickle.dumps({"w": _Payload(tmp_path / "PWNED")}))
    torch.save({"tokenizer.w": torch.zeros(4)}, files["torch-zip"][0])
    files["truncated"][0].write_bytes(blob[:-100])
    files["short"][0].write_bytes(blob[:5])
    files["empty"][0].write_bytes(b"")
    files["text"][0].write_text("tokenizer: these are not weights\n" * 4)
    files["directory"][0].mkdir()
    return files


def test_check_weights_file_names_the_file_and_the_problem(tmp_path):
    from larp.train.checkpoint import check_weights_file

    for name, (path, words) in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            check_weights_file(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and words in msg and "\n" not in msg, (name, msg)
        with pytest.raises(CheckpointError, match=words):  # the loader itself, not only the CLI check
            load_weights(path, torch.nn.Linear(2, 2), "tokenizer")
    assert not (tmp_path / "PWNED").exists()
    check_weights_file(tmp_path / "good.safetensors")


COMMANDS = {
    "tokenize": lambda w, t: ["tokenize", "--frames", str(t / "frames"), "--tokenizer", str(w), "--out",
                              str(t / "tokens")],
    "rfvd": lambda w, t: ["rfvd", "--frames", str(t / "frames"), "--tokenizer", str(w), "--out", str(t / "r.json")],
    "sample-tokenizer": lambda w, t: ["sample", "--frames", str(t / "frames"), "--tokenizer", str(w), "--ar",
                                      str(t / "good.safetensors"), "--shard", "0", "--out", str(t / "s")],
    "sample-ar": lambda w, t: ["sample", "--frames", str(t / "frames"), "--tokenizer", str(t / "good.safetensors"),
                               "--ar", str(w), "--shard", "0", "--out", str(t / "s")],
    "train-ar": lambda w, t: ["train-ar", "--tokens", str(t / "tokens"), "--tokenizer", str(w), "--out",
                              str(t / "ar.safetensors"), "--metrics", str(t / "m.csv")],
    "import-weights": lambda w, t: ["import-weights", "--kind", "tokenizer", "--src", str(w), "--out",
                                    str(t / "imported.safetensors")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_weights_command_one_line_exit_2(tmp_path, capsys, command):
    for name, (path, _) in bad_files(tmp_path).items():
        if command == "import-weights" and name == "directory":
            continue  # a directory is a valid --src there (a downloaded hub repo); tested below
        argv = COMMANDS[command](path, tmp_path)
        rc = main([argv[0], "--params", str(ROOT / "params.yaml"), "--dataset", "embedded", *argv[1:]])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (command, name, err)
        assert len(err.splitlines()) == 1 and str(path) in err, (command, name, err)
    assert not (tmp_path / "PWNED").exists()


def test_import_weights_bad_directory_and_unsafe_pickle_exit_2(tmp_path, capsys):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(tmp_path / "PWNED")}))
    for src in (tmp_path / "hub", tmp_path / "empty-dir"):
        src.mkdir(exist_ok=True)
        rc = main(["import-weights", "--params", str(ROOT / "params.yaml"), "--dataset", "embedded", "--kind",
                   "tokenizer", "--src", str(src), "--out", str(tmp_path / "o.safetensors")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and str(src) in err, err
    assert not (tmp_path / "PWNED").exists()


def test_refused_resume_checkpoint_says_move_the_run_directory_aside(tmp_path):
    """An unsafe or unusable checkpoint in a run directory: one line, and what to do about it."""
    from larp.train.loop import resume_checkpoint

    run_dir = tmp_path / "runs" / "tokenizer-abc"
    ckpt = run_dir / "checkpoints"
    save_checkpoint(ckpt, 100, {"step": 100})
    (ckpt / "step-000000100.pt").write_bytes(pickle.dumps({"w": _Payload(tmp_path / "PWNED")}))
    (ckpt / "step-000000100.pt.sha256").write_text(
        __import__("hashlib").sha256((ckpt / "step-000000100.pt").read_bytes()).hexdigest() + "\n")
    with pytest.raises(CheckpointError) as e:
        resume_checkpoint(run_dir)
    msg = str(e.value)
    assert "\n" not in msg and "refusing" in msg and f"move the run directory {run_dir} aside" in msg
    (ckpt / "step-000000100.pt").write_bytes(b"garbage")  # corrupt, and no older one to fall back on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as e:
            resume_checkpoint(run_dir)
    msg = str(e.value)
    assert "\n" not in msg and "no usable checkpoint" in msg and f"move the run directory {run_dir} aside" in msg
    assert not (tmp_path / "PWNED").exists()


def test_train_tokenizer_with_a_poisoned_run_directory_exits_2_and_says_what_to_do(tmp_path, capsys):
    """The command end to end: a pickle in place of the newest checkpoint of the run it resumes."""
    import hashlib

    import yaml
    from micro import MICRO, make_frames

    frames = make_frames(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"presets": {"embedded": "tiny"}, **MICRO, "train_tokenizer": {
        **MICRO["train_tokenizer"], "checkpoint_every": 1}}))
    argv = ["train-tokenizer", "--params", str(params), "--dataset", "embedded", "--frames", str(frames), "--out",
            str(tmp_path / "t.safetensors"), "--metrics", str(tmp_path / "m.csv")]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    newest = max((run_dir / "checkpoints").glob("step-*.pt"))
    newest.write_bytes(pickle.dumps({"step": _Payload(tmp_path / "PWNED")}))
    newest.with_name(newest.name + ".sha256").write_text(hashlib.sha256(newest.read_bytes()).hexdigest() + "\n")
    (tmp_path / "t.safetensors").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(newest) in err, err
    assert f"move the run directory {run_dir} aside" in err
    assert not (tmp_path / "PWNED").exists()
