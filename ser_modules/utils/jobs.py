"""Independent jobs (folds, runs, models) in parallel worker processes, one thread each.

On a CPU the toolkit's small recurrent models are latency-bound: two single-thread processes train
about 1.5-2x the utterances per second of one two-thread process (``ser_modules.benchmark``), so
every stage with independent work runs it through :func:`run_jobs`. Workers are spawned (no state
leaks from the parent), receive a shared ``state`` once, and read it with :func:`worker_state`.

SIGTERM (what a scheduler sends on pre-emption) and SIGINT stop the stage: the pool's workers are
terminated with it, and finished jobs' outputs stay, so a rerun resumes.

With several devices (``--ngpu N``), each worker process holds one of them (``worker_state()["device"]``),
so the N devices share the stage's jobs and only the main process writes the stage's shared outputs.
Beyond one machine, :func:`submit_jobs` runs the jobs as cluster jobs through submitit (Slurm, or
its local executor).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from ser_modules.utils.fileio import ManifestError, cpu_count

_STATE: dict = {}


def default_jobs(nj: int, device: str = "cpu") -> int:
    """``nj`` if positive, else one job per GPU on CUDA or one per core on CPU."""
    if nj > 0:
        return nj
    if device.startswith("cuda"):
        return max(1, torch.cuda.device_count())
    return cpu_count()


def worker_state() -> dict:
    """The ``state`` given to :func:`run_jobs`, in a worker (or in the main process when ``nj`` is 1)."""
    return _STATE


def visible_gpus() -> int:
    """GPUs this process can see (``CUDA_VISIBLE_DEVICES`` applies), 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def job_devices(device: str, ngpu: int = 0) -> list[str]:
    """The devices a stage's independent jobs share, from the requested ``--device`` (before it is
    resolved): ``auto`` or ``cuda`` -> ``ngpu`` GPUs ``cuda:0..ngpu-1`` (``ngpu`` 0: every visible GPU;
    ``auto`` without a GPU: the CPU); ``cuda:K`` -> that one GPU; ``cpu`` -> the CPU."""
    if device == "auto" and not visible_gpus():
        return ["cpu"]
    if device not in ("auto", "cuda"):
        if device.startswith("cuda:") and ngpu > 1:
            raise ManifestError(f"--device {device} names one GPU, but --ngpu {ngpu} asks for {ngpu}: use --device "
                                "cuda (or auto) to share the jobs over cuda:0..N-1")
        return [device]
    visible = visible_gpus()
    n = ngpu or visible
    if not visible or n > visible:
        raise ManifestError(f"--device {device} --ngpu {ngpu or 'all'}: this process sees {visible} GPU(s) "
                            "(torch.cuda.device_count(), after CUDA_VISIBLE_DEVICES)")
    return [f"cuda:{i}" for i in range(n)]


def resolve_device(device: str) -> str:
    """The device this process computes on, resolved where it runs (a Slurm job on its compute node,
    not on the submitting host): ``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` ->
    ``cuda:<LOCAL_RANK>``, so each data-parallel rank of ``torchrun`` holds its own GPU (``cuda:0``
    outside torchrun). ``cuda:K`` is kept, but refused under torchrun with several ranks (they would
    all land on GPU K)."""
    if device == "auto":
        device = "cuda" if visible_gpus() else "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda":
        if not visible_gpus():
            raise ManifestError("--device cuda: no GPU is visible to this process (torch.cuda.is_available() is False)")
        return f"cuda:{int(local_rank or 0)}"
    world = int(os.environ.get("WORLD_SIZE", 1))
    if device.startswith("cuda:") and world > 1:
        raise ManifestError(f"--device {device} names one GPU, but {world} data-parallel processes need one each: "
                            "use --device cuda (rank k takes cuda:k)")
    return device


def _init_worker(state: dict, threads: int, setup: Callable | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides; it terminates the pool
    torch.set_num_threads(threads)
    _STATE.clear()
    _STATE.update(state)
    devices = state.get("devices")
    if devices:  # pool worker k (1-based) holds device k-1 (round robin when there are more workers)
        _STATE["device"] = devices[worker_index() % len(devices)]
    if setup is not None:
        setup(_STATE)


def worker_index() -> int:
    """0-based index of this pool worker (0 in the main process)."""
    identity = mp.current_process()._identity
    return identity[0] - 1 if identity else 0


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` in the main process, so ``finally`` blocks and pool shutdown run."""
    if mp.current_process().name == "MainProcess":
        signal.signal(signal.SIGTERM, _raise_on_sigterm)


_FAULTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability tests (``tests/test_faults.py``): with the environment
    variable ``SER_FAULT=<name>:<n>:<SIGNAL>`` (e.g. ``epoch:1:SIGKILL``), the process sends itself
    ``SIGNAL`` the ``n``-th time it passes the point ``name``: ``job`` (a stage-3/4/5 job finished),
    ``epoch`` (an ASR or SER epoch saved) or ``utterance`` (an utterance written to a stage-4 store).
    ``SER_FAULT_SLOW=<name>:<seconds>`` makes every pass of ``name`` sleep, so that a test's signal
    surely lands while work is still running, however fast the machine trains."""
    slow_point, _, seconds = os.environ.get("SER_FAULT_SLOW", "").partition(":")
    if slow_point == name:
        time.sleep(float(seconds))
    spec = os.environ.get("SER_FAULT", "")
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count, _, sig = rest.partition(":")
    _FAULTS[name] = _FAULTS.get(name, 0) + 1
    if _FAULTS[name] == int(count):
        os.kill(os.getpid(), getattr(signal, sig))


def run_jobs(fn: Callable, jobs: Iterable, nj: int, state: dict, desc: str, setup: Callable | None = None,
             threads: int | None = None) -> Iterable:
    """Yield ``fn(job)`` for every job, from ``nj`` spawned worker processes (in completion order),
    or in this process when ``nj`` is 1. ``fn`` is a module-level function reading
    :func:`worker_state`; ``setup(state)`` runs once per worker (e.g. to open stores). With
    ``state["devices"]`` (:func:`job_devices`), each worker's ``state["device"]`` is one of them."""
    jobs = list(jobs)
    nj = max(1, min(nj, len(jobs)))
    stop_on_sigterm()
    if nj == 1:
        _init_worker(state, threads or torch.get_num_threads(), setup)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for job in tqdm(jobs, desc=desc):
            yield fn(job)
            fault_point("job")
        return
    threads = threads or max(1, cpu_count() // nj)
    with _JobContext().Pool(nj, initializer=_init_worker, initargs=(state, threads, setup)) as pool:
        try:
            for result in tqdm(pool.imap_unordered(fn, jobs), total=len(jobs), desc=desc):
                yield result
                fault_point("job")
        except BaseException:
            pool.terminate()
            raise


class _JobProcess(mp.context.SpawnProcess):
    """A pool worker that may start processes of its own (a job's data loader workers), which
    multiprocessing forbids daemonic processes; the pool still terminates it with the stage."""

    @property
    def daemon(self) -> bool:
        return False

    @daemon.setter
    def daemon(self, value) -> None:
        pass


class _JobContext(mp.context.SpawnContext):
    Process = _JobProcess


def _run_submitted(fn: Callable, state: dict, setup: Callable | None, job):
    """One cluster job: the worker set-up of :func:`run_jobs`, its device resolved here, on the node
    that runs it (``state["device_request"]``: a GPU-less login node must not decide), then ``fn(job)``."""
    _init_worker({**state, "devices": [resolve_device(state.get("device_request", state.get("device", "cpu")))]},
                 1, setup)
    return fn(job)


def submit_jobs(fn: Callable, jobs: Iterable, state: dict, folder: str, launcher: str = "slurm",
                setup: Callable | None = None, partition: str | None = None, time_min: int = 240,
                gres: str | None = None, name: str = "ser") -> Iterable:
    """Yield ``fn(job)`` for every job, each run as one cluster job by submitit, in submission order.

    ``launcher`` ``slurm`` submits to Slurm (``partition``, ``time_min`` per job, ``gres`` such as
    ``gpu:1``), as ESPnet hands jobs to ``slurm.pl``; ``submitit-local`` runs the same jobs as local
    processes (submitit's local executor). Logs and pickles go to ``folder``. A job that fails stops
    the stage with its error; the stage stopping (a signal, an error) cancels the jobs not finished.
    """
    try:
        import submitit
    except ImportError as err:
        raise ManifestError(f"--launcher {launcher} needs submitit: pip install 'ser-toolkit[cluster]'") from err
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "submitit-local" else "slurm")
    options = {"timeout_min": time_min, "cpus_per_task": 1, "name": name}
    if partition:
        options["slurm_partition"] = partition
    if gres:
        options["slurm_gres"] = gres
    executor.update_parameters(**options)
    stop_on_sigterm()
    with executor.batch():
        submitted = [executor.submit(_run_submitted, fn, state, setup, job) for job in jobs]
    try:
        for job in tqdm(submitted, desc=f"{name} ({launcher} jobs)"):
            try:
                result = job.result()
            except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
                lines = str(err).strip().splitlines()
                raise ManifestError(f"{job.paths.stderr}: {launcher} job {job.job_id} failed: "
                                    f"{lines[-1] if lines else type(err).__name__}") from err
            yield result
            fault_point("job")
    finally:
        for job in submitted:
            if not job.done():
                job.cancel(check=False)
