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


def _common(p: argparse.ArgumentParser, dataset_positional: bool = False) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
    if dataset_positional:
        p.add_argument("dataset", choices=DATASETS)
    else:
        p.add_argument("--dataset", choices=DATASETS, required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="larp", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", help="print the resolved, validated parameters of a dataset")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--dataset", choices=DATASETS, default=None)

    p = sub.add_parser("download", help="fetch (ucf101) or generate (embedded) a dataset and index it")
    _common(p, dataset_positional=True)
    p.add_argument("--out", type=Path, required=True, help="raw dataset directory, e.g. data/raw/ucf101")

    p = sub.add_parser("extract", help="decode, resize and centre-crop every video into frame shards")
    _common(p)
    p.add_argument("--raw", type=Path, required=True, help="raw dataset directory (with index.csv)")
    p.add_argument("--out", type=Path, required=True, help="frames directory, e.g. data/frames/ucf101")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pf = read_params_file(args.params)
        dataset = getattr(args, "dataset", None)
        params = pf.resolve(dataset)
    except ParamsError as e:
        print(f"larp: invalid parameters: {e}", file=sys.stderr)
        return 2

    from larp import stages

    if args.command == "params":
        print(json.dumps({"dataset": dataset or pf.dataset, "preset": pf.presets[dataset or pf.dataset],
                          **dataclasses.asdict(params)}, indent=2))
    elif args.command == "download":
        stages.download(args.dataset, args.out, params)
    elif args.command == "extract":
        stages.extract(args.dataset, args.raw, args.out, params)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
