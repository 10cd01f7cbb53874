"""Stage entry points: multi-GPU stage commands start torchrun themselves (larp.launch)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from larp import launch, stages


class Exec(Exception):
    """Stands in for os.execvp / the torchrun agent, which would replace or take over the test process."""


def _fake_gpus(monkeypatch, n: int) -> list:
    calls: list = []
    monkeypatch.setattr("torch.cuda.is_available", lambda: n > 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: n)

    def agent(args):
        calls.append(args)
        raise Exec

    monkeypatch.setattr(launch, "run_agent", agent)
    monkeypatch.setattr("sys.argv", ["larp", "train-ar", "--dataset", "ucf101", "--out", "x.safetensors"])
    for name in ("LOCAL_RANK", "LARP_NNODES", "LARP_NPROC_PER_NODE", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_several_gpus_start_torchrun_standalone(monkeypatch):
    calls = _fake_gpus(monkeypatch, 4)
    with pytest.raises(Exec):
        launch.relaunch_distributed()
    assert calls == [["--nproc-per-node=4", "--standalone", "-m", "larp.cli", "train-ar", "--dataset", "ucf101",
                      "--out", "x.safetensors"]]


def test_tokenize_relaunches_over_the_allocation_before_any_work(monkeypatch, tmp_path):
    calls = _fake_gpus(monkeypatch, 2)
    with pytest.raises(Exec):  # the frames do not exist: nothing was read before the relaunch
        stages.tokenize("ucf101", tmp_path / "none", tmp_path / "t.safetensors", tmp_path / "tokens", None)
    assert calls and calls[0][:2] == ["--nproc-per-node=2", "--standalone"]


@pytest.mark.parametrize("gpus, local_rank", [(1, None), (0, None), (4, "0")])
def test_no_relaunch_with_one_gpu_or_inside_torchrun(monkeypatch, gpus, local_rank):
    calls = _fake_gpus(monkeypatch, gpus)
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    launch.relaunch_distributed()
    assert calls == []


def test_train_tokenizer_takes_frame_directories_or_a_root():
    from larp.cli import build_parser

    base = ["train-tokenizer", "--dataset", "ucf101", "--out", "t.safetensors", "--metrics", "m.csv"]
    args = build_parser().parse_args([*base, "--frames", "data/frames/k600", "data/frames/ucf101"])
    assert [str(f) for f in args.frames] == ["data/frames/k600", "data/frames/ucf101"] and args.frames_root is None
    assert str(build_parser().parse_args([*base, "--frames-root", "data/frames"]).frames_root) == "data/frames"
    for bad in ([], ["--frames", "a", "--frames-root", "b"]):  # exactly one of the two
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, *bad])


def test_a_missing_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    from larp.cli import main

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    rc = main(["train-tokenizer", "--params", str(params), "--dataset", "ucf101", "--frames-root", str(tmp_path), "--out",
               str(tmp_path / "t.safetensors"), "--metrics", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("larp train-tokenizer: ") and "Traceback" not in err
    assert "no frames of 'k600'" in err and "larp extract --dataset k600" in err


def test_the_cli_is_a_table_over_the_stage_entry_points():
    import argparse
    import inspect

    from larp.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) - set(COMMANDS) == {"params", "detectors", "report"}  # the rest: no stage
    for command, (function, names) in COMMANDS.items():
        signature = inspect.signature(getattr(stages, function))
        assert set(signature.parameters) - {"params"} == set(names), command  # every argument, by its name
        dests = {a.dest for a in sub.choices[command]._actions}
        assert set(names) <= dests, command
