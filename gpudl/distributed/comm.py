"""Communicators: the collectives data-parallel training needs, one class per transport.

    MPIComm      mpi4py on host (NumPy) buffers; device buffers are staged through the host
    NCCLComm     CuPy's NCCL bindings (cupy.cuda.nccl) on device buffers, no host copies
    SingleComm   a world of one process: every collective is the identity
    ThreadGroup  a fake world of threads in one process, for tests (no MPI, no GPU)

Every communicator offers, on arrays of its backend, in place where it says so:

    allreduce(buf)          buf <- sum over ranks of buf (in place; returns buf)
    broadcast(buf, root=0)  buf <- root's buf (in place; returns buf)
    allgather(buf)          a new (size, *buf.shape) array of every rank's buf
    allreduce_host(values)  sum over ranks of a small host float64 vector (metrics)
    bcast_object(obj)       rank 0's JSON-able object on every rank (seeds, NCCL ids)
    barrier()
    abort(code, message)    end the whole job (every rank), never returns

A collective that does not finish within ``timeout`` seconds (another rank
failed, was killed or is stuck) does not hang: it prints which collective
timed out on which rank and aborts the job, so the launcher exits non-zero.
MPI collectives run non-blocking (Iallreduce, Ibcast, ...) and are polled
against the deadline; NCCL work is polled through a CUDA event.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time

import numpy as np

#: seconds a collective may take before the job is aborted (GPUDL_DIST_TIMEOUT)
DEFAULT_TIMEOUT = float(os.environ.get("GPUDL_DIST_TIMEOUT", "300"))


class DistributedError(RuntimeError):
    """A distributed run cannot go on (a lost rank, a timeout, a bad launch)."""


def array_module(a):
    """numpy for NumPy arrays, cupy for CuPy arrays."""
    if isinstance(a, np.ndarray):
        return np
    import cupy  # only reached with device arrays
    return cupy.get_array_module(a)


def _to_host(a):
    return a if isinstance(a, np.ndarray) else a.get()


class Communicator:
    """The collectives above; subclasses implement them for one transport."""

    name = "base"
    rank = 0
    size = 1

    def __init__(self, timeout=None):
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def allreduce(self, buf):
        raise NotImplementedError

    def broadcast(self, buf, root=0):
        raise NotImplementedError

    def allgather(self, buf):
        raise NotImplementedError

    def allreduce_host(self, values):
        return np.asarray(values, dtype=np.float64).copy()

    def bcast_object(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def synchronize(self, what="collective"):
        """Wait (with the deadline) until the collectives issued so far have finished."""

    def abort(self, code=1, message=None):
        if message:
            print(f"gpudl.distributed: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        os._exit(code)

    def _timed_out(self, what):
        self.abort(1, f"{what} did not finish within {self.timeout:g} s (another rank failed, "
                      f"was killed or is stuck); aborting the job "
                      f"(GPUDL_DIST_TIMEOUT sets the limit)")


class SingleComm(Communicator):
    """One process: every collective is the identity."""

    name = "single"

    def allreduce(self, buf):
        return buf

    def broadcast(self, buf, root=0):
        return buf

    def allgather(self, buf):
        return buf.reshape((1,) + tuple(buf.shape)).copy()


# ---------------------------------------------------------------------------- MPI
class MPIComm(Communicator):
    """mpi4py's COMM_WORLD (or ``comm``) on host buffers.

    Collectives are the non-blocking ones (Iallreduce, Ibcast, Iallgather,
    Ibarrier) followed by a polling wait with a deadline: a rank that died or
    hangs makes the others abort the job instead of waiting for ever. Device
    (CuPy) buffers are copied to the host and back, for GPUs without NCCL."""

    name = "mpi"

    def __init__(self, comm=None, timeout=None):
        super().__init__(timeout)
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def _wait(self, request, what):
        """Test the request until done; abort the job past the deadline. The
        first polls spin (a bucket's all-reduce on shared memory takes
        microseconds), then the poll backs off to at most 1 ms so a waiting
        rank leaves the CPU to the one it waits for."""
        if request.Test():
            return
        deadline = time.monotonic() + self.timeout
        pause, spins = 0.0, 0
        while not request.Test():
            spins += 1
            if spins > 50:
                if time.monotonic() > deadline:
                    self._timed_out(f"MPI {what}")
                pause = min(1e-3, pause * 2 or 1e-6)
                time.sleep(pause)

    def _host_op(self, buf, op):
        if isinstance(buf, np.ndarray):
            if not buf.flags.c_contiguous:
                raise ValueError("MPIComm: buffers must be C-contiguous")
            op(buf)
            return buf
        host = _to_host(buf)  # device buffer without NCCL: through the host
        op(host)
        buf[...] = array_module(buf).asarray(host)
        return buf

    def allreduce(self, buf):
        return self._host_op(buf, lambda b: self._wait(
            self.comm.Iallreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM), "allreduce"))

    def broadcast(self, buf, root=0):
        return self._host_op(buf, lambda b: self._wait(self.comm.Ibcast(b, root=root),
                                                       "broadcast"))

    def allgather(self, buf):
        host = np.ascontiguousarray(_to_host(buf))
        out = np.empty((self.size,) + host.shape, host.dtype)
        self._wait(self.comm.Iallgather(host, out), "allgather")
        return out if isinstance(buf, np.ndarray) else array_module(buf).asarray(out)

    def allreduce_host(self, values):
        buf = np.array(values, dtype=np.float64)
        return self.allreduce(buf)

    def bcast_object(self, obj, root=0):
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else data.size], np.int64)
        self.broadcast(n, root)
        buf = data.copy() if data is not None else np.empty(int(n[0]), np.uint8)
        self.broadcast(buf, root)
        return json.loads(buf.tobytes().decode())

    def barrier(self):
        self._wait(self.comm.Ibarrier(), "barrier")

    def abort(self, code=1, message=None):
        if message:
            print(f"gpudl.distributed: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)


# ---------------------------------------------------------------------------- TCP store
class TCPStore:
    """Rank 0 listens at MASTER_ADDR:MASTER_PORT and the others connect: enough
    to hand out the NCCL unique id (and a seed) when there is no MPI. Messages
    are length-prefixed JSON, never pickles."""

    def __init__(self, addr, port, rank, size, timeout=None):
        self.rank, self.size = rank, size
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        deadline = time.monotonic() + self.timeout
        self.peers = []
        if rank == 0:
            self.server = socket.create_server(("", int(port)), reuse_port=False)
            self.server.settimeout(self.timeout)
            peers = {}
            while len(peers) < size - 1:
                try:
                    conn, _ = self.server.accept()
                except socket.timeout:
                    raise DistributedError(
                        f"TCPStore: only {len(peers)} of {size - 1} ranks connected to port "
                        f"{port} within {self.timeout:g} s") from None
                conn.settimeout(self.timeout)
                peers[self._recv(conn)["rank"]] = conn
            self.peers = [peers[r] for r in sorted(peers)]
        else:
            self.server = None
            while True:
                try:
                    self.conn = socket.create_connection((addr, int(port)), timeout=self.timeout)
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise DistributedError(f"TCPStore: rank {rank} could not reach "
                                               f"{addr}:{port} (MASTER_ADDR:MASTER_PORT): {e}")
                    time.sleep(0.2)
            self.conn.settimeout(self.timeout)
            self._send(self.conn, {"rank": rank})

    @staticmethod
    def _send(conn, obj):
        data = json.dumps(obj).encode()
        conn.sendall(struct.pack("!Q", len(data)) + data)

    @staticmethod
    def _recv(conn):
        def exactly(n):
            out = b""
            while len(out) < n:
                chunk = conn.recv(n - len(out))
                if not chunk:
                    raise DistributedError("TCPStore: a rank closed its connection (it failed?)")
                out += chunk
            return out
        (n,) = struct.unpack("!Q", exactly(8))
        return json.loads(exactly(n).decode())

    def bcast_object(self, obj, root=0):
        if root != 0:
            raise ValueError("TCPStore: only rank 0 broadcasts")
        if self.rank == 0:
            for conn in self.peers:
                self._send(conn, {"value": obj})
            return obj
        return self._recv(self.conn)["value"]

    def barrier(self):
        if self.rank == 0:
            for conn in self.peers:
                self._recv(conn)
            for conn in self.peers:
                self._send(conn, {})
        else:
            self._send(self.conn, {})
            self._recv(self.conn)

    def close(self):
        for conn in self.peers + ([self.conn] if self.rank else []):
            conn.close()
        if self.server is not None:
            self.server.close()


# ---------------------------------------------------------------------------- NCCL
_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8",
               "int8": "NCCL_INT8"}


class NCCLComm(Communicator):
    """NCCL through CuPy (``cupy.cuda.nccl.NcclCommunicator``) on device buffers.

    ``bootstrap`` hands rank 0's NCCL unique id to the others: an MPIComm
    (under mpiexec) or a TCPStore at MASTER_ADDR:MASTER_PORT. Collectives are
    queued on CuPy's current stream, in order with the kernels around them,
    and nothing goes through the host; ``synchronize`` waits on a CUDA event
    with the deadline and aborts the NCCL communicator (then the job) when
    it passes. ``nccl`` and ``cupy`` may be stand-in modules for tests (the
    tests run this class over NumPy memory with a fake NCCL; see
    tests/test_distributed.py)."""

    name = "nccl"

    def __init__(self, rank, size, bootstrap, timeout=None, nccl=None, cupy=None):
        super().__init__(timeout)
        if nccl is None:
            from cupy.cuda import nccl
        if cupy is None:
            import cupy
        self.cupy, self.nccl = cupy, nccl
        self.rank, self.size, self.bootstrap = rank, size, bootstrap
        uid = nccl.get_unique_id() if rank == 0 else None
        uid = bootstrap.bcast_object(None if uid is None else list(uid))
        self.comm = nccl.NcclCommunicator(size, tuple(uid), rank)

    def _dtype(self, buf):
        name = _NCCL_TYPES.get(np.dtype(buf.dtype).name)
        if name is None:
            raise TypeError(f"NCCLComm: no NCCL type for dtype {buf.dtype}")
        return getattr(self.nccl, name)

    def _check(self, buf):
        if not buf.flags.c_contiguous:
            raise ValueError("NCCLComm: buffers must be C-contiguous device arrays")

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    @staticmethod
    def _ptr(buf):
        """The device address of a CuPy array (a NumPy one's address under a fake NCCL)."""
        data = buf.data
        return data.ptr if hasattr(data, "ptr") else buf.ctypes.data

    def allreduce(self, buf):
        self._check(buf)
        self.comm.allReduce(self._ptr(buf), self._ptr(buf), buf.size, self._dtype(buf),
                            self.nccl.NCCL_SUM, self._stream())
        return buf

    def broadcast(self, buf, root=0):
        self._check(buf)
        self.comm.bcast(self._ptr(buf), buf.size, self._dtype(buf), root, self._stream())
        return buf

    def allgather(self, buf):
        buf = self.cupy.ascontiguousarray(buf)
        out = self.cupy.empty((self.size,) + tuple(buf.shape), buf.dtype)
        self.comm.allGather(self._ptr(buf), self._ptr(out), buf.size, self._dtype(buf),
                            self._stream())
        return out

    def allreduce_host(self, values):
        buf = self.cupy.asarray(np.asarray(values, dtype=np.float64))
        self.allreduce(buf)
        self.synchronize("allreduce")
        return _to_host(buf)

    def bcast_object(self, obj, root=0):
        return self.bootstrap.bcast_object(obj, root)

    def barrier(self):
        self.allreduce_host([0.0])

    def synchronize(self, what="collective"):
        event = self.cupy.cuda.Event(block=False, disable_timing=True)
        event.record()
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not event.done:
            if time.monotonic() > deadline:
                try:
                    self.comm.abort()  # frees the GPU work stuck in NCCL
                finally:
                    self._timed_out(f"NCCL {what}")
            pause = min(1e-3, pause * 2 or 1e-6)
            time.sleep(pause)

    def abort(self, code=1, message=None):
        if isinstance(self.bootstrap, MPIComm):
            self.bootstrap.abort(code, message)
        super().abort(code, message)


# ---------------------------------------------------------------------------- fake world
class ThreadGroup:
    """``size`` ranks as threads of one process, for tests: ``group.comms[r]``
    is rank r's communicator; run one thread per rank (``group.run(fn)``
    calls fn(comm) on each and returns their results in rank order)."""

    def __init__(self, size, timeout=30.0):
        self.size = size
        self.timeout = timeout
        self.slots = [None] * size
        self.barrier_ = threading.Barrier(size, timeout=timeout)
        self.comms = [ThreadComm(self, r) for r in range(size)]

    def run(self, fn):
        results, errors = [None] * self.size, []

        def target(r):
            try:
                results[r] = fn(self.comms[r])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                self.barrier_.abort()
        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


class ThreadComm(Communicator):
    name = "threads"

    def __init__(self, group, rank):
        super().__init__(group.timeout)
        self.group, self.rank, self.size = group, rank, group.size
        self.calls = []  # (op, dtype, elements) per collective, for tests

    def _exchange(self, value):
        g = self.group
        g.slots[self.rank] = value
        g.barrier_.wait()
        out = list(g.slots)
        g.barrier_.wait()
        return out

    def allreduce(self, buf):
        self.calls.append(("allreduce", np.dtype(buf.dtype).name, int(buf.size)))
        parts = self._exchange(buf.copy())
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        buf[...] = total
        return buf

    def broadcast(self, buf, root=0):
        self.calls.append(("broadcast", np.dtype(buf.dtype).name, int(buf.size)))
        parts = self._exchange(buf.copy())
        buf[...] = parts[root]
        return buf

    def allgather(self, buf):
        self.calls.append(("allgather", np.dtype(buf.dtype).name, int(buf.size)))
        return np.stack(self._exchange(np.array(buf, copy=True)))

    def allreduce_host(self, values):
        return self.allreduce(np.array(values, dtype=np.float64))

    def bcast_object(self, obj, root=0):
        return json.loads(json.dumps(self._exchange(obj)[root]))

    def barrier(self):
        self._exchange(None)

    def abort(self, code=1, message=None):
        raise DistributedError(message or "abort")
