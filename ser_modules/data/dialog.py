"""Dialog context: the previous turn of the same speaker and of the interlocutor (IAAN's inputs).

IAAN (Yeh, Lin, Lee 2019) reads, for a target turn, the most recent earlier turn of the same speaker
(``prev_same``, U_p) and of the other speaker (``prev_other``, U_r), looking back at most
``CONTEXT_WINDOW`` turns in dialog order; a missing one is an all-zero input. Stage 1 computes them
for IEMOCAP-layout corpora; inference computes them for new recordings from a CSV
(``path,speaker,dialog,order``) or an IEMOCAP-style folder.
"""

from __future__ import annotations

import os
import re

import pandas as pd

from ser_modules.utils.fileio import ManifestError

CONTEXT_WINDOW = 8
# ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`` (IEMOCAP transcriptions/<dialog>.txt)
TRANSCRIPTION_LINE = re.compile(r"^(\S+)\s+\[(\d+\.?\d*)-(\d+\.?\d*)\]:\s?(.*)$")
UTTERANCE_ID = re.compile(r"^(Ses(\d\d)[FM]_.+)_([FM])(\d{3})$")


def add_context(turns: pd.DataFrame, window: int = CONTEXT_WINDOW) -> pd.DataFrame:
    """Add ``turn_index`` (order by start time within the dialog) and the ids of the previous turn of
    the same speaker (``prev_same``) and of the interlocutor (``prev_other``), looking back at most
    ``window`` turns; empty where there is none. ``turns`` needs ``ID, dialog, speaker, start, end``."""
    turns = turns.sort_values(["dialog", "start", "end", "ID"]).reset_index(drop=True)
    turns["turn_index"] = turns.groupby("dialog").cumcount()
    prev_same, prev_other = [], []
    for _, group in turns.groupby("dialog", sort=False):
        ids, speakers = group["ID"].tolist(), group["speaker"].tolist()
        for i in range(len(ids)):
            same = other = ""
            for j in range(i - 1, max(-1, i - 1 - window), -1):
                if speakers[j] == speakers[i]:
                    same = same or ids[j]
                else:
                    other = other or ids[j]
            prev_same.append(same)
            prev_other.append(other)
    turns["prev_same"] = prev_same
    turns["prev_other"] = prev_other
    return turns


def parse_transcription_lines(path: str) -> dict[str, tuple[float, float, str]]:
    """``{utterance id: (start, end, text)}`` of an IEMOCAP ``transcriptions/<dialog>.txt``; lines
    without a time stamp or with ids that are not turns (``_MXX0``) are skipped."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = TRANSCRIPTION_LINE.match(raw.strip())
            if m and UTTERANCE_ID.match(m.group(1)):
                out[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4).strip())
    return out


def context_from_csv(path: str) -> pd.DataFrame:
    """Turns of a CSV with columns ``path,speaker,dialog,order`` (paths relative to the CSV's folder
    allowed); ``ID`` is each turn's absolute audio path."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "speaker": str, "dialog": str})
    except Exception as err:
        raise ManifestError(f"{path}: cannot read the dialog context CSV ({err})") from err
    missing = [c for c in ("path", "speaker", "dialog", "order") if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: the dialog context CSV lacks column(s) {missing} (needs path,speaker,dialog,order)")
    try:
        order = pd.to_numeric(frame["order"])
    except ValueError as err:
        raise ManifestError(f"{path}: column 'order' must be numeric ({err})") from err
    base = os.path.dirname(os.path.abspath(path))
    ids = [os.path.normpath(os.path.join(base, p)) for p in frame["path"]]
    turns = pd.DataFrame({"ID": ids, "speaker": frame["speaker"], "dialog": frame["dialog"], "start": order,
                          "end": order})
    if turns["ID"].duplicated().any():
        raise ManifestError(f"{path}: audio file {turns.loc[turns['ID'].duplicated(), 'ID'].iloc[0]} listed twice")
    return add_context(turns)


def context_from_iemocap_folder(root: str) -> pd.DataFrame:
    """Turns of an IEMOCAP-layout folder (``Session*/sentences/wav/<dialog>/*.wav``), ordered by the
    start times of ``Session*/dialog/transcriptions/<dialog>.txt``; the speaker is the session and the
    gender letter of the turn id. ``ID`` is each turn's absolute audio path."""
    rows = []
    sessions = sorted(d for d in os.listdir(root) if re.fullmatch(r"Session\d+", d)) if os.path.isdir(root) else []
    if not sessions:
        raise ManifestError(f"{root}: not an IEMOCAP-style folder (no Session<N>/ folders)")
    for session in sessions:
        wav_root = os.path.join(root, session, "sentences", "wav")
        for dialog in sorted(os.listdir(wav_root)) if os.path.isdir(wav_root) else []:
            trans = os.path.join(root, session, "dialog", "transcriptions", f"{dialog}.txt")
            times = parse_transcription_lines(trans) if os.path.isfile(trans) else {}
            for name in sorted(os.listdir(os.path.join(wav_root, dialog))):
                utt, ext = os.path.splitext(name)
                m = UTTERANCE_ID.match(utt)
                if ext.lower() != ".wav" or not m:
                    continue
                start, end, _ = times.get(utt, (float(m.group(4)), float(m.group(4)), ""))
                rows.append({"ID": os.path.abspath(os.path.join(wav_root, dialog, name)), "dialog": dialog,
                             "speaker": f"{m.group(2)}{m.group(3)}", "start": start, "end": end})
    if not rows:
        raise ManifestError(f"{root}: no turn audio under Session*/sentences/wav/<dialog>/")
    return add_context(pd.DataFrame(rows))


def load_dialog_context(source: str) -> pd.DataFrame:
    """Dialog context from a CSV file or an IEMOCAP-style folder (see the two readers)."""
    if os.path.isdir(source):
        return context_from_iemocap_folder(source)
    if os.path.isfile(source):
        return context_from_csv(source)
    raise ManifestError(f"{source}: no such dialog context (a CSV path,speaker,dialog,order or an IEMOCAP-style folder)")


class DialogContext:
    """IAAN's dialog context of new recordings (inference): for an audio file, the signals of the previous
    turn of the same speaker and of the interlocutor, and what its result row says about them. ``source``:
    a CSV or an IEMOCAP-style folder (:func:`load_dialog_context`), the turns it gives, or None (zero
    context); ``iaan``: whether the variant reads context at all."""

    def __init__(self, source: str | pd.DataFrame | None, iaan: bool):
        self.iaan = iaan
        self.turns = None  # absolute audio path -> (previous turn of the same speaker, of the other)
        if source is not None:
            turns = load_dialog_context(source) if isinstance(source, str) else source
            pairs = zip(turns["ID"], turns["prev_same"], turns["prev_other"])
            self.turns = {i: (p or None, o or None) for i, p, o in pairs}

    def __call__(self, path: str, max_seconds: float) -> tuple[tuple, str]:
        """The context signals of ``path`` (at most ``max_seconds`` of each turn; None where missing) and
        its row's note ("" for a variant without context)."""
        if not self.iaan:
            return (None, None), ""
        if self.turns is None:
            return (None, None), "zero (no --context given)"
        key = os.path.normpath(os.path.abspath(path))
        if key not in self.turns:
            return (None, None), "zero (file not in --context)"
        from ser_modules.data.audio import load_audio  # here: corpus preparation imports this module without torch

        turns = self.turns[key]
        signals = tuple(load_audio(t, 0.0, max_seconds) if t else None for t in turns)
        return signals, "dialog" if any(t for t in turns) else "zero (first turn of its dialog)"
