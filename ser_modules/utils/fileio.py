"""Atomic writes, manifest (CSV) reading and writing, and experiment logging.

Every output of the toolkit is written to a temporary name in the same folder and renamed when
complete, so an interrupted run never leaves a half-written file that a rerun would take as whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import pandas as pd

from ser_modules.utils.audio_file import AudioReadError

logger = logging.getLogger(__name__)

# Columns that stay text even when every value looks like a number (speaker "1", session "2").
TEXT_COLUMNS = ("ID", "wav", "speaker", "gender", "session", "emotion", "label", "transcript", "dialog", "votes",
                "prev_same", "prev_other", "corpus")


class ManifestError(ValueError):
    """A manifest or corpus file is malformed; the message names the file and the problem."""


class TrainingDiverged(RuntimeError):
    """Training cannot go on (every batch's loss is non-finite); the message says where and why."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path: str) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically and with the same bytes for the same tensors: saved
    through a file object, the archive's inner folder is ``archive``, not the temporary file's random name
    (so a model's file digest, and every key built from it, is the same in a rerun)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_text(path: str, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str):
    """Read a JSON file, naming the file in any error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise ManifestError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: invalid JSON ({err})") from err


def write_csv(path: str, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_manifest(path: str, required: Sequence[str] = ("ID",)) -> pd.DataFrame:
    """Read a manifest CSV; check that ``required`` columns exist and IDs are unique.

    Text columns stay text (no NaN for empty cells) so that transcripts and ids round-trip.
    """
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found (did stage 1, data preparation, run?)")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[], dtype={c: str for c in TEXT_COLUMNS})
    except Exception as err:
        raise ManifestError(f"{path}: cannot parse CSV ({err})") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    if "ID" in frame.columns and frame["ID"].duplicated().any():
        dup = frame.loc[frame["ID"].duplicated(), "ID"].iloc[0]
        raise ManifestError(f"{path}: duplicate utterance ID {dup!r}")
    return frame


def run_main(main: Callable[[], object], name: str):
    """Run a command-line ``main`` and return its result. A :class:`ManifestError`, an
    :class:`~ser_modules.utils.hparams.HparamsError`, an :class:`~ser_modules.utils.audio_file.AudioReadError` or a
    :class:`TrainingDiverged` (their
    messages name the file or key and the problem) ends it with that one line and exit code 1, not a
    traceback; Ctrl-C with one line and exit code 130."""
    from ser_modules.utils.hparams import HparamsError

    try:
        return main()
    except (ManifestError, HparamsError, AudioReadError, TrainingDiverged) as err:
        logging.getLogger(name).error("%s", err)
        sys.exit(1)
    except KeyboardInterrupt:
        logging.getLogger(name).error("interrupted: finished work is kept, a rerun resumes")
        sys.exit(130)


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, if given, append to ``log_file`` with timestamps; return the root logger."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_ser_console", False) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        console._ser_console = True
        root.addHandler(console)
    if log_file:
        log_file = os.path.abspath(log_file)
        if not any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            handler = logging.FileHandler(log_file, encoding="utf-8")
            handler.setFormatter(fmt)
            root.addHandler(handler)
    return root


def cpu_count() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def file_digest(*paths: str, algorithm: str = "sha1") -> str:
    """SHA-1 (or ``algorithm``, a :mod:`hashlib` name) of the contents of ``paths`` (in order): what a
    result was computed from."""
    h = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_optional_json(path: str) -> dict:
    """A JSON file's object, or ``{}`` when the file does not exist (an optional stage output)."""
    return read_json(path) if os.path.isfile(path) else {}


def _stamp(inputs: dict):
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def _read_stamp(folder: str):
    try:
        with open(os.path.join(folder, "inputs.json"), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def key_digest(inputs: dict) -> str:
    """A short digest of a unit of work's inputs: what names its unfinished work when set aside."""
    return hashlib.sha1(json.dumps(_stamp(inputs), sort_keys=True).encode()).hexdigest()[:12]


class StagedOutputs:
    """The outputs of one unit of work (an SER run, an adapted model, the ASR training), written aside
    and renamed into place when complete, so finished outputs are never deleted before their
    replacement is whole. Readers skip the hidden work folders (names starting with a dot).

    ``folder`` holds finished outputs and their ``inputs.json`` (what they were made from); work in
    progress lives in the hidden sibling ``.<name>.partial`` with the ``inputs.json`` of what it is
    making, so an interrupted run resumes there. Unfinished work of other inputs is never deleted:
    it is moved aside to ``.<name>.aside-<digest of its inputs>`` (one log line says where), and a
    later run with those inputs again (``batch_size`` set back after an out-of-memory error, say)
    takes it back and resumes it. Being a sibling, the work folder keeps relative paths valid. Under
    DDP only the main process (``RANK`` 0) prepares the work folder; the others wait for it.
    """

    def __init__(self, folder: str, inputs: dict):
        self.folder = os.path.normpath(folder)
        parent, name = os.path.split(self.folder)
        self.work = os.path.join(parent, f".{name}.partial")
        self._old = os.path.join(parent, f".{name}.old")
        self.key = _stamp(inputs)

    @property
    def done(self) -> bool:
        """True when ``folder`` holds finished outputs of exactly these inputs."""
        if os.path.isdir(self._old):  # interrupted between two renames of publish()
            if os.path.isdir(self.folder):
                shutil.rmtree(self._old)
            else:
                os.replace(self._old, self.folder)
        return _read_stamp(self.folder) == self.key

    def aside_path(self, inputs: dict) -> str:
        """Where unfinished work of ``inputs`` is kept while other inputs are being worked on."""
        parent, name = os.path.split(self.folder)
        return os.path.join(parent, f".{name}.aside-{key_digest(inputs)}")

    def begin(self) -> str:
        """The work folder for these inputs: resumed when it holds them (or when work of them was set
        aside earlier), else made empty after moving other inputs' unfinished work aside. Returns its path."""
        if _read_stamp(self.work) == self.key:
            return self.work
        if int(os.environ.get("RANK", 0)) > 0:  # DDP: the main process prepares the folder
            deadline = time.time() + 600
            while _read_stamp(self.work) != self.key:
                if time.time() > deadline:
                    raise ManifestError(f"{self.work}: the main process did not prepare this folder within 10 minutes")
                time.sleep(0.5)
            return self.work
        if os.path.isdir(self.work):
            self._set_aside()
        aside = self.aside_path(self.key)
        if _read_stamp(aside) == self.key:
            os.replace(aside, self.work)
            logger.info("%s: resuming the unfinished work of these inputs, set aside earlier in %s", self.work, aside)
            return self.work
        os.makedirs(self.work)
        write_json(os.path.join(self.work, "inputs.json"), self.key)
        return self.work

    def _set_aside(self) -> None:
        """Move the work folder of other inputs out of the way, never deleting any of it."""
        stamp = _read_stamp(self.work)
        # made but never written to, or stopped while writing its inputs.json (an atomic write's temporary
        # file is all it holds): nothing to keep
        if stamp is None and all(n.startswith(".inputs.json.") for n in os.listdir(self.work)):
            shutil.rmtree(self.work)
            return
        target = self.aside_path(stamp) if stamp is not None else self.aside_path({"unreadable inputs.json": True})
        base, n = target, 2
        while os.path.exists(target):  # never overwrite work kept earlier
            target, n = f"{base}-{n}", n + 1
        os.replace(self.work, target)
        logger.warning("%s: unfinished work of another configuration moved aside to %s (kept: the same "
                       "configuration again resumes it; delete it to free the disk)", self.work, target)

    def publish(self) -> str:
        """Rename the finished work folder onto ``folder`` (replacing older outputs only now); return ``folder``."""
        if os.path.isdir(self.folder):
            shutil.rmtree(self._old, ignore_errors=True)
            os.replace(self.folder, self._old)
        os.replace(self.work, self.folder)
        shutil.rmtree(self._old, ignore_errors=True)
        return self.folder
