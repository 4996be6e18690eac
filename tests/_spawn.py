"""Shared by the tests that run 2 gloo ranks in one test: spawn them, start and end each rank."""
import faulthandler
import os
import socket

RANK_LIMIT_S = 240  # a rank normally ends within 20 s on 2 cores
COLLECTIVE_LIMIT_S = 120


def spawn_ranks(worker, world: int, *args) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes on a free local port; raises when a
    rank fails."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, *args), nprocs=world, join=True)


def start_rank(rank: int, world: int, port: int, limit_s: float = RANK_LIMIT_S) -> None:
    """The first call of a spawned worker: one intra-op thread, the gloo process group on ``port``, and a watchdog.

    A rank still running after ``limit_s`` prints the stacks of all its threads and exits with status 1, so a
    hang becomes a failure of ``spawn_ranks`` that names the rank (instead of a test that never ends); a collective
    whose peer has gone fails after ``COLLECTIVE_LIMIT_S`` for the same reason."""
    import datetime

    import torch
    import torch.distributed as dist

    faulthandler.dump_traceback_later(limit_s, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_LIMIT_S))


def end_rank() -> None:
    """The last call of a rank that has written its results: wait for the other ranks, then leave at once, without
    destroying the process group and without interpreter finalisation. The operating system closes the sockets.

    Either of the two usual endings can fail in a rank whose collectives held tensors with Python objects (every
    gather here, DDP's allreduce in backward):

    * ``destroy_process_group`` with the last reference to the group runs the gloo destructor with the GIL held
      (torch 2.4). The destructor joins the gloo worker threads, and a worker that is still freeing a finished
      collective's tensors waits for the GIL: a deadlock (seen with gdb). Measured on 2 cores with a pair of ranks
      that gather, barrier and destroy, round after round: torch 2.4.1 hung in 12 tries of 12, by round 105 at the
      latest; torch 2.14.1 finished 300 rounds in 4 tries of 4. It hung CI's torch 2.4 tests once.
    * Returning, with the group alive (DDP's reducer keeps it so), lets interpreter finalisation start while such a
      worker still needs the GIL: the worker is cut off inside a noexcept destructor and the rank dies of
      std::terminate (SIGABRT) after the test body passed: 4 runs in 70 with torch 2.14.1 on 2 cores.

    The barrier makes every rank finish every collective before any rank's sockets close."""
    import torch.distributed as dist

    dist.barrier()
    faulthandler.cancel_dump_traceback_later()
    os._exit(0)
