"""How one `larp` stage command becomes one DDP process per GPU on every node of its allocation.

Snakemake and DVC run the same plain command (`larp train-tokenizer ...`). That first process decides:

* already a torchrun worker (LOCAL_RANK set), or one node with at most one GPU: it does the work itself;
* one node, several GPUs: it becomes torchrun's agent for that node (``--standalone``);
* a SLURM allocation of N > 1 nodes: it replaces itself with ``srun --nodes=N --ntasks-per-node=1 --overlap``
  running the same command once per node, with LARP_NNODES, LARP_RDZV_ENDPOINT (the first node of
  SLURM_JOB_NODELIST) and LARP_RDZV_ID (the job id) set;
* LARP_NNODES set (by that srun, or by hand on a cluster without SLURM, one launcher per node): it becomes
  torchrun's agent for its node, joining a c10d rendezvous of ``--nnodes=LARP_NNODES`` agents.

The per-node agent is torchrun's own (``torch.distributed.run``), run in this process for two reasons: SIGTERM
and SIGUSR1 (SLURM's preemption and time-limit warning) are passed on to the workers, which checkpoint and
exit 75, instead of killing the agent (SIGUSR1's default action) or being taken as the agent's death (torchrun
then SIGKILLs workers that are still saving after 30 s); and a worker's exit code 75 becomes the node's exit
code, so that the job reads "preempted, checkpointed" on every node.

Environment overrides: LARP_NPROC_PER_NODE (processes per node; default: the node's GPU count, CPU runs use it
for several gloo processes), LARP_RDZV_ENDPOINT (host:port when the first node's name is not reachable as
such), LARP_RDZV_PORT (default 20000 + job id mod 20000, so jobs sharing a first node do not collide).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class LaunchError(RuntimeError):
    pass


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer from the environment, or ``default``."""
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name} must be an integer, got {value!r}") from None
    if n < 1:
        raise LaunchError(f"environment variable {name} must be >= 1, got {n}")
    return n


def slurm_hostnames(nodelist: str) -> list[str]:
    """The host names of a SLURM node list (``gpu[01-03]`` -> three names), as SLURM itself expands them."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise LaunchError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with `scontrol show hostnames`: {e}") from e
    hosts = out.split()
    if not hosts:
        raise LaunchError(f"`scontrol show hostnames {nodelist}` listed no host")
    return hosts


def torchrun_args(env: Mapping[str, str], gpus: int) -> list[str] | None:
    """torchrun's options for this node's agent, or None: one process does the work (no torchrun).

    ``gpus``: the GPUs this node sees."""
    nproc = _int(env, "LARP_NPROC_PER_NODE", max(gpus, 1))
    nodes = _int(env, "LARP_NNODES", 1)
    if nodes == 1:
        return None if nproc == 1 else [f"--nproc-per-node={nproc}", "--standalone"]
    endpoint = env.get("LARP_RDZV_ENDPOINT")
    if not endpoint:
        raise LaunchError(f"LARP_NNODES={nodes} needs LARP_RDZV_ENDPOINT=host:port of the first node's agent")
    return [f"--nproc-per-node={nproc}", f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={env.get('LARP_RDZV_ID', 'larp')}"]


def srun_command(argv: Sequence[str], env: Mapping[str, str]) -> list[str] | None:
    """In a SLURM allocation of several nodes: `srun` running ``larp <argv>`` once per node with the rendezvous
    in LARP_* variables; None when there is one node or this process already is one of those."""
    if "LARP_NNODES" in env or not env.get("SLURM_JOB_NODELIST"):
        return None
    hosts = slurm_hostnames(env["SLURM_JOB_NODELIST"])
    if len(hosts) == 1:
        return None
    job = env.get("SLURM_JOB_ID", "0")
    port = _int(env, "LARP_RDZV_PORT", 20000 + (int(job) if job.isdigit() else 0) % 20000)
    rendezvous = {"LARP_NNODES": str(len(hosts)), "LARP_RDZV_ID": f"slurm-{job}",
                  "LARP_RDZV_ENDPOINT": env.get("LARP_RDZV_ENDPOINT") or f"{hosts[0]}:{port}"}
    # --overlap: the step that started us (Snakemake's jobstep) holds the first node's CPUs and GPUs;
    # --kill-on-bad-exit: a node that fails ends the others instead of leaving them at a collective
    return ["env", *(f"{k}={v}" for k, v in rendezvous.items()), "srun", f"--nodes={len(hosts)}",
            "--ntasks-per-node=1", "--overlap", "--kill-on-bad-exit=1", sys.executable, "-m", "larp.cli", *argv]


def relaunch_distributed(argv: Sequence[str] | None = None) -> None:
    """Start the stage's DDP processes when its allocation has several GPUs or nodes (call before any work).

    In a multi-node SLURM allocation this process is replaced by :func:`srun_command`; on a node with several
    processes to start it becomes their torchrun agent and exits with :func:`run_agent`'s code; otherwise
    (one process, or a torchrun worker already) it returns and the caller does the work."""
    if "LOCAL_RANK" in os.environ:  # a torchrun worker
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    if cmd := srun_command(argv, os.environ):
        print("launching:", " ".join(cmd), flush=True)
        os.execvp(cmd[0], cmd)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args := torchrun_args(os.environ, gpus):
        print("torchrun", " ".join(args), "-m larp.cli", " ".join(argv), flush=True)
        sys.exit(run_agent([*args, "-m", "larp.cli", *argv]))


# ---- the per-node agent: torchrun in this process ----


def _children() -> list[int]:
    """Process ids whose parent is this process (the workers torchrun started)."""
    me, kids = os.getpid(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # field 4, after "pid (comm) state"
                kids.append(int(entry.name))
    return kids


def _forward(signum: int, frame) -> None:
    for pid in _children():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_agent(torchrun_args: Sequence[str]) -> int:
    """torchrun with ``torchrun_args`` as this node's agent; the exit code: 0, 75 when the workers stopped for a
    preemption checkpoint, else torchrun's error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from larp.train.loop import PREEMPTED_EXIT_CODE

    # torchrun keeps its own handling (stop everything) for the other signals only
    args = get_args_parser().parse_args(["--signals-to-handle=SIGINT,SIGHUP,SIGQUIT", *torchrun_args])
    for s in FORWARDED_SIGNALS:
        signal.signal(s, _forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)  # a launcher may have blocked them
    try:
        run(args)
    except ChildFailedError as e:
        # a worker exits 75 only after the barrier that follows the checkpoint: every rank has saved; its
        # local peers may be stopped by the agent meanwhile, so one such exit code suffices
        if any(f.exitcode == PREEMPTED_EXIT_CODE for f in e.failures.values()):
            print(f"larp.launch: workers checkpointed and stopped; exiting with {PREEMPTED_EXIT_CODE}",
                  file=sys.stderr, flush=True)
            return PREEMPTED_EXIT_CODE
        raise
    return 0
