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


# Columns that stay text even when every value looks like a number (speaker "1", session "2").
TEXT_COLUMNS = ("ID", "wav", "speaker", "gender", "session", "emotion", "label", "transcript", "dialog", "votes",
                "prev_same", "prev_other", "corpus")


class ManifestError(ValueError):
    """A manifest or corpus file is malformed; the message names the file and the problem."""


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
    :class:`~ser_modules.hparams.HparamsError` or an :class:`~ser_modules.audio.AudioReadError` (their
    messages name the file or key and the problem) ends it with that one line and exit code 1, not a
    traceback; Ctrl-C with one line and exit code 130."""
    from ser_modules.audio import AudioReadError
    from ser_modules.hparams import HparamsError

    try:
        return main()
    except (ManifestError, HparamsError, AudioReadError) as err:
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


def file_digest(*paths: str) -> str:
    """SHA-1 of the contents of ``paths`` (in order): what a result was computed from."""
    h = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fresh_outputs(folder: str, inputs: dict) -> bool:
    """True when ``folder`` was made from exactly ``inputs`` (its ``inputs.json``). Otherwise the
    folder's stale contents are removed, ``inputs.json`` is written and False is returned."""
    stamp = os.path.join(folder, "inputs.json")
    key = json.loads(json.dumps(inputs, sort_keys=True, default=str))

    def up_to_date() -> bool:
        try:
            with open(stamp, encoding="utf-8") as f:
                return json.load(f) == key
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    if up_to_date():
        return True
    if int(os.environ.get("RANK", 0)) > 0:  # DDP: only the main process cleans; the others wait for its stamp
        deadline = time.time() + 600
        while not up_to_date():
            if time.time() > deadline:
                raise ManifestError(f"{folder}: the main process did not prepare this folder within 10 minutes")
            time.sleep(0.5)
        return False
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    write_json(stamp, key)
    return False
