"""Shared by the tests that run 2 gloo ranks in one test: spawn them, and end each rank safely."""
import os
import socket


def spawn_ranks(worker, world: int, *args) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes on a free local port; raises when a
    rank fails."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, *args), nprocs=world, join=True)


def end_rank() -> None:
    """The last call of a rank that has written its results: wait for the other ranks, destroy the process group and
    leave without interpreter finalisation.

    A collective started during a backward pass (DDP's allreduce, a custom Function's gather) captures thread-local
    state that holds a Python object (the context torch stashes for the backward). The gloo worker thread frees that
    work after it completes, and freeing it takes the GIL. If the interpreter is finalising by then, the thread is cut
    off inside a noexcept destructor and the rank dies of std::terminate (SIGABRT) after the test body passed: 1 run
    in 15 on 2 cores. destroy_process_group does not join those threads while DDP reducers keep the group alive, so
    the rank leaves with ``os._exit``."""
    import torch.distributed as dist

    dist.barrier()  # every rank is done with every collective before any tears the group down
    dist.destroy_process_group()
    os._exit(0)
