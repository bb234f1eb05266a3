"""The communicator of a data-parallel job: the only module that knows there are ranks.

`communicator()` returns `Communicator()` for one process, or an `MPI` communicator when the
process was started by `mpiexec` with more than one rank (mpi4py; between CuPy devices NCCL, its
unique id broadcast over MPI, through `backend.collectives`). Training needs four collectives:
average the gradients (all of them in one buffer, one call per step), sum a few host numbers
(progress, validation counts), broadcast rank 0's weights, and a barrier.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from xpcnn.backend import (
    BackendError,
    active_device,
    backend_name,
    device,
    device_name,
    namespace,
    to_numpy,
)
from xpcnn.backend.collectives import host_buffer, nccl_available, nccl_sum
from xpcnn.layers.flat import FlatState

# set by the launchers of Open MPI, MPICH / Intel MPI (PMI) and PMIx
ABORT_GRACE_S = 0.5  # for the launcher to forward the last lines before the job ends
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
# the rank among those on this machine: Open MPI, MPICH's Hydra, Slurm's srun
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


class Communicator:
    """The communicator of one process (rank 0 of 1), where every collective is the identity;
    `MPI` is the one of several."""

    rank, size, local_rank = 0, 1, 0
    note: str | None = None  # why the job runs other than asked (one line), for the CLI to show

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def average_gradients(self, model: Any, count: int) -> None:
        pass

    def average_buffers(self, model: Any) -> None:
        pass

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def broadcast(self, value: Any) -> Any:
        return value

    def broadcast_state(self, model: Any) -> None:
        pass

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        pass


class MPI(Communicator):
    """mpi4py's COMM_WORLD (MPI's own collectives on host arrays; NCCL between CuPy devices)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            raise BackendError(
                f"started with {_launched_size()} MPI ranks but mpi4py is not installed: "
                "pip install 'xpcnn[mpi]'"
            ) from None
        self.mpi, self.comm = mpi, mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank = local.Get_rank()
        self.nccl = None
        if backend_name() == "cupy":
            # the backend chose each rank's GPU (active_device); NCCL needs one GPU per rank
            devices = local.allgather(device_name(active_device()))
            self.note = device_reduction(devices, nccl_available())
            if self.note is None:
                broadcast = lambda value: self.comm.bcast(value, root=0)  # noqa: E731
                self.nccl = nccl_sum(self.size, self.rank, broadcast)

    def average_gradients(self, model: Any, count: int) -> None:
        """Replace each parameter's gradient of this rank's mean loss over its `count` images by
        the gradient of the mean loss over all ranks' images: Σ count_r · g_r / Σ count_r, in one
        reduction of the model's flat gradient buffer (`FlatState`), whose last element carries
        the count: no packing copies, nothing read back to the host."""
        flat = FlatState.of(model)
        flat.gather_gradients()
        for group in flat.groups:
            grads = group.grads  # a view: the in-place operations write the buffer
            grads *= count
            group.reduced[-1] = count
            self._allreduce(group.reduced)
            grads /= group.reduced[-1]

    def average_buffers(self, model: Any) -> None:
        """BatchNorm's running statistics, which each rank kept from its own share of every
        batch, averaged over the ranks (exactly the whole batches' running means; the variances'
        mean leaves out the spread between the ranks' means): once an epoch, before validation,
        so that every rank then holds the one model that the checkpoint saves and validation
        scores."""
        for group in FlatState.of(model).groups:
            buffers = group.state[group.size :]  # the float buffers follow the parameters
            if buffers.shape[0]:
                self._allreduce(buffers)
                buffers /= self.size

    def _allreduce(self, buffer: Any) -> None:
        if self.nccl is not None:
            self.nccl(buffer)
        elif host_buffer(buffer):
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=self.mpi.SUM)
        else:  # other host namespaces: through NumPy, one copy each way
            host = np.ascontiguousarray(to_numpy(buffer))
            self.comm.Allreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)
            buffer[...] = namespace(buffer).asarray(host, device=device(buffer))

    def sum(self, values: list[float]) -> list[float]:
        host = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)
        return host.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object: a path, a checkpoint's arrays) on every rank."""
        return self.comm.bcast(value if self.rank == 0 else None, root=0)

    def broadcast_state(self, model: Any) -> None:
        """Every rank takes rank 0's weights and buffers."""
        state = {k: to_numpy(v) for k, v in model.state_dict().items()}
        model.load_state_dict(self.comm.bcast(state if self.rank == 0 else None, root=0))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        """End every rank of the job (a rank that stops alone would leave the others waiting)."""
        self.comm.Abort(code)


def _launched_size() -> int:
    return _from_environment(_SIZE_VARIABLES, 1)


def abort_job(code: int) -> None:
    """End every rank of an MPI job this process belongs to (nothing outside one)."""
    if _launched_size() > 1:
        try:
            from mpi4py import MPI as mpi
        except ImportError:
            return
        if mpi.Is_initialized() and not mpi.Is_finalized():
            # the launcher forwards each rank's output through its daemon, and Abort kills the
            # job at once: the error line written just before was lost now and then under load
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            mpi.COMM_WORLD.Abort(code)


def launched_local_rank() -> int | None:
    """This process's rank among the launcher's processes on this machine, readable before MPI
    starts; None outside a launcher."""
    return _from_environment(_LOCAL_RANK_VARIABLES, None)


def device_reduction(devices: list[str], nccl_available: bool) -> str | None:
    """None when NCCL can reduce between the GPUs of one machine's ranks (`devices`, one per
    local rank), else the note that says why the gradients are reduced on the host instead."""
    if not nccl_available:
        return "NCCL is not installed (pip install nvidia-nccl-cu12 or -cu13): gradients are " \
               "reduced through the host"  # fmt: skip
    shared = sorted({d for d in devices if devices.count(d) > 1})
    if shared:
        return f"{len(devices)} ranks on this machine share {', '.join(shared)} (NCCL needs one " \
               "GPU per rank): gradients are reduced through the host"  # fmt: skip
    return None


def launched_rank() -> int:
    """This process's rank as its launcher says (0 outside MPI), readable before MPI starts."""
    return _from_environment(_RANK_VARIABLES, 0)


def _from_environment(variables: tuple[str, ...], default: int | None) -> int | None:
    for variable in variables:
        value = os.environ.get(variable, "").strip()
        if value.isdigit():
            return int(value)
    return default


def communicator() -> Communicator:
    """`MPI()` when launched by mpiexec with more than one rank, else `Communicator()`."""
    return MPI() if _launched_size() > 1 else Communicator()
