"""Data-parallel training over MPI: the pieces ``fit(..., distributed=True)`` is built from.

Run a script under ``mpiexec -n N python train.py``; every process (rank) runs the same
script. For a hand-written loop::

    from rnnfast import distributed as dist

    dist.broadcast_params(model.params)          # rank 0's weights everywhere
    dist.broadcast_optimizer(opt)                # and its optimiser state
    for x, targets in my_batches:                # each rank its own rows
        out, _, cache = model.forward(x)
        value, dlogits = rnnfast.losses.cross_entropy(out, targets, reduction="sum")
        _, _, grads = model.backward(cache, dlogits)
        value, terms = dist.allreduce_grads(grads, value, targets.size)
        for g in grads.values():
            g /= terms                           # the mean over every rank's terms
        opt.step(grads)                          # the same step on every rank
    dist.check_params_agree(model.params)        # RankMismatchError if a rank drifted

For checkpoints, every rank calls ``rnnfast.save(..., distributed=True)`` (rank 0 writes,
the others wait) and ``rnnfast.load`` (any number of ranks).

mpi4py is imported by these functions only, never by ``import rnnfast``. Without mpi4py
installed, or in a process not started by mpiexec, the world has one rank: ``rank()`` is 0,
``size()`` is 1 and the collectives return their input. Every collective here must be
called by all ranks in the same order, as with MPI itself.
"""

import contextlib
import sys
import traceback
import zlib

import numpy as np

INSTALL_HINT = 'pip install "rnnfast[mpi]"'


class RankMismatchError(RuntimeError):
    """The ranks' parameters, which data-parallel training keeps identical, differ.

    Raised on every rank together (each decides from the same gathered checksums), so the
    job ends instead of the ranks training on as different models.
    """


def _mpi():
    """mpi4py's MPI module, or None when mpi4py (or the MPI library it loads) is missing."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


def require_mpi():
    """mpi4py's ``MPI`` module; ImportError naming the extra to install when it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py and an MPI library: "
                          f"{INSTALL_HINT}, then launch with `mpiexec -n 2 python train.py` "
                          f"({exc})") from exc
    return MPI


def world():
    """``MPI.COMM_WORLD``, or None when mpi4py is not installed."""
    MPI = _mpi()
    return None if MPI is None else MPI.COMM_WORLD


def _comm(comm):
    return world() if comm is None else comm


def rank(comm=None):
    """This process's rank in ``comm`` (default: the world); 0 without mpi4py."""
    comm = _comm(comm)
    return 0 if comm is None else comm.Get_rank()


def size(comm=None):
    """The number of ranks in ``comm`` (default: the world); 1 without mpi4py or mpiexec."""
    comm = _comm(comm)
    return 1 if comm is None else comm.Get_size()


def barrier(comm=None):
    """Wait until every rank has called ``barrier``."""
    comm = _comm(comm)
    if comm is not None and comm.Get_size() > 1:
        comm.Barrier()


def shard(n, comm=None):
    """The contiguous ``slice`` of ``n`` rows that this rank takes: rank r of N gets rows
    ``[n*r // N, n*(r+1) // N)``, so that the shards, in rank order, are the rows in order
    (some are empty when n < N)."""
    r, N = rank(comm), size(comm)
    return slice(n * r // N, n * (r + 1) // N)


def broadcast_params(params, root=0, comm=None):
    """Overwrite every array of ``params`` (a name -> ndarray dict, e.g. ``model.params``),
    in place, with rank ``root``'s; names, shapes and dtypes must agree on every rank."""
    comm = _comm(comm)
    if comm is None or comm.Get_size() == 1:
        return params
    names = list(params)
    theirs = comm.bcast(names if comm.Get_rank() == root else None, root=root)
    if theirs != names:
        raise ValueError(f"rank {comm.Get_rank()}'s parameter names differ from rank {root}'s: "
                         f"{sorted(set(names) ^ set(theirs))}")
    for name in names:
        p = params[name]
        if not p.flags.c_contiguous:  # Bcast needs one buffer; the live array keeps its layout
            tmp = np.ascontiguousarray(p)
            comm.Bcast(tmp, root=root)
            p[...] = tmp
        else:
            comm.Bcast(p, root=root)
    return params


def broadcast_optimizer(optimizer, root=0, comm=None):
    """Give every rank rank ``root``'s optimiser state (step count, learning rate,
    hyperparameters and state arrays), through ``state_dict`` / ``load_state_dict``."""
    comm = _comm(comm)
    if comm is None or comm.Get_size() == 1:
        return optimizer
    sd = comm.bcast(optimizer.state_dict() if comm.Get_rank() == root else None, root=root)
    if comm.Get_rank() != root:
        optimizer.load_state_dict(sd)
    return optimizer


def allreduce_grads(grads, *scalars, comm=None):
    """Sum ``grads`` (name -> ndarray) over all ranks in place, with the ``scalars`` summed
    alongside; returns the summed scalars as a tuple of floats.

    Everything travels in one float64 buffer through one ``Allreduce``, in the order of the
    dict's keys (the same on every rank), so the cost is one collective whatever the number
    of tensors, and a loss sum and a count of terms can ride with the gradients. Gradients in
    float32 are summed in float64 and rounded back once.
    """
    comm = _comm(comm)
    if comm is None or comm.Get_size() == 1:
        return tuple(float(s) for s in scalars)
    MPI = require_mpi()
    arrays = list(grads.values())
    n = sum(g.size for g in arrays)
    buf = np.empty(n + len(scalars), dtype=np.float64)
    i = 0
    for g in arrays:
        buf[i:i + g.size] = g.ravel()
        i += g.size
    buf[n:] = scalars
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    i = 0
    for g in arrays:
        g[...] = buf[i:i + g.size].reshape(g.shape)
        i += g.size
    return tuple(float(s) for s in buf[n:])


def check_same(fingerprint, what="configuration", comm=None):
    """Raise ValueError on every rank unless ``fingerprint`` (a small picklable dict) is
    equal on all ranks; the message names the first rank and key that differ from rank 0.

    Gathered with one ``allgather``, so every rank reaches the same verdict and raises
    together instead of hanging in a later collective that another rank never joins.
    """
    comm = _comm(comm)
    if comm is None or comm.Get_size() == 1:
        return
    every = comm.allgather(fingerprint)
    first = every[0]
    for r, other in enumerate(every[1:], start=1):
        if other == first:
            continue
        keys = sorted(set(first) | set(other), key=str)
        diff = [k for k in keys if first.get(k) != other.get(k)]
        details = "; ".join(f"{k}: rank 0 has {first.get(k)!r}, rank {r} has {other.get(k)!r}"
                            for k in diff)
        raise ValueError(f"the ranks were given different {what} (every rank must run the "
                         f"same model on the same data): {details}")


def checksum(params):
    """(float64 sum, crc32 of the bytes) of a params dict, in its key order: cheap to
    compute and to gather. The sum is readable in a message; the crc32 catches what a sum
    can miss (two changes that cancel, a swapped pair of values)."""
    total, crc = 0.0, 0
    for p in params.values():
        flat = np.ascontiguousarray(p).reshape(-1)
        total += float(flat.sum(dtype=np.float64))
        crc = zlib.crc32(flat.view(np.uint8), crc)
    return total, crc


def check_params_agree(params, when="", comm=None, extra=None):
    """Raise ``RankMismatchError`` on every rank unless ``params`` are the same on all
    ranks, compared by ``checksum`` in one ``allgather``; returns every rank's ``extra``
    (any small picklable value gathered alongside), in rank order.

    The message names the ranks whose parameters differ from rank 0's, with each rank's
    sum and crc32. In a world of one, returns ``[extra]``.
    """
    comm = _comm(comm)
    if comm is None or comm.Get_size() == 1:
        return [extra]
    total, crc = checksum(params)
    # float.hex: NaN equals NaN as text, so parameters that are NaN everywhere still agree
    every = comm.allgather((total.hex(), crc, extra))
    sums = [float.fromhex(h) for h, _, _ in every]
    keys = [(h, c) for h, c, _ in every]
    differ = [r for r, k in enumerate(keys) if k != keys[0]]
    if differ:
        listed = ", ".join(str(r) for r in differ)
        each = "; ".join(f"rank {r}: sum {s!r}, crc32 {c:08x}"
                         for r, (s, (_, c)) in enumerate(zip(sums, keys)))
        raise RankMismatchError(
            f"the parameters differ between ranks{' ' + when if when else ''}: "
            f"rank{'s' if len(differ) > 1 else ''} {listed} differ{'' if len(differ) > 1 else 's'}"
            f" from rank 0 ({each}). Data-parallel ranks must stay identical: something "
            f"changed one rank's parameters alone (a callback or code acting on one rank, "
            f"different data contents on the ranks, or a fault)")
    return [e for _, _, e in every]


@contextlib.contextmanager
def abort_on_error(comm=None, keep=()):
    """Turn an exception on one rank into the end of the whole job.

    Inside the block, an exception (other than the types in ``keep``, which the caller knows
    every rank raises together) is printed to stderr as ``rank R: <Type>: <message>`` with its
    traceback, then ``comm.Abort(1)`` ends every rank: the others would otherwise wait forever
    in their next collective. In a world of one the exception propagates unchanged.
    """
    comm = _comm(comm)
    try:
        yield
    except BaseException as exc:
        if comm is None or comm.Get_size() == 1 or isinstance(exc, keep) \
                or isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        r = comm.Get_rank()
        print(f"rank {r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        print(f"rank {r}: aborting all {comm.Get_size()} ranks", file=sys.stderr, flush=True)
        comm.Abort(1)
        raise  # Abort does not return; here only if an MPI library lets it
