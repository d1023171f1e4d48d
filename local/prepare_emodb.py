#!/usr/bin/env python3
"""EmoDB (Berlin Database of Emotional Speech) preparer: one protocol, leave-k-speakers-out folds.

Layout as distributed: ``<root>/wav/<spk><text><emotion><version>.wav``, e.g. ``03a01Fa.wav`` =
speaker 03, text a01, emotion F (happiness), version a. Speakers (documented genders): male 03 10
11 12 15, female 08 09 13 14 16. Emotion letters (German initials): W anger (Wut), L boredom
(Langeweile), E disgust (Ekel), A fear (Angst), F happiness (Freude), T sadness (Trauer),
N neutral. 16 kHz mono, German (language ``de``). The transcript of each file is the sentence of its
text code, from the corpus documentation (emodb.bilderbar.info); the ASR alphabet spells its umlauts
out (``ser_modules.data.text.normalize_transcript``: ``Tüten`` -> ``TUETEN``).

Default ``k = 1``: 10 folds, one test speaker each (leave-one-speaker-out); the validation speaker
is the next one in gender-interleaved order, so of the other gender.

Usage: ``python local/prepare_emodb.py --root /data/emodb --out data/emotion [--label-map iemocap4]``
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import Counter

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speaker_fold_common import iter_files, log_counts, probe_duration, speaker_fold_main  # noqa: E402

from ser_modules.data.corpus import write_speaker_fold_corpus  # noqa: E402
from ser_modules.utils.fileio import ManifestError, run_main  # noqa: E402

logger = logging.getLogger("prepare_emodb")

DEFAULT_K = 1
EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
            "N": "neutral"}
# The ten sentences, by the text code of the file name (characters 3-5: 03a01Fa.wav -> a01).
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.", "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
GENDERS = {"03": "M", "10": "M", "11": "M", "12": "M", "15": "M",
           "08": "F", "09": "F", "13": "F", "14": "F", "16": "F"}
_FILE_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])\.(?i:wav)$")


def parse_file_name(path: str) -> dict | None:
    """Speaker, gender, label and transcript of an EmoDB file name, or None when it does not follow the
    pattern. Raises :class:`ManifestError` naming the file for an undocumented speaker, text code or
    emotion letter."""
    m = _FILE_NAME.match(os.path.basename(path))
    if not m:
        return None
    speaker, text, emotion, _ = m.groups()
    if emotion not in EMOTIONS:
        raise ManifestError(f"{path}: unknown emotion letter {emotion!r} (known: {''.join(sorted(EMOTIONS))})")
    if speaker not in GENDERS:
        raise ManifestError(f"{path}: unknown speaker {speaker!r} (EmoDB speakers: {' '.join(sorted(GENDERS))})")
    if text not in TEXTS:
        raise ManifestError(f"{path}: unknown text code {text!r} (EmoDB texts: {' '.join(sorted(TEXTS))})")
    return {"speaker": speaker, "gender": GENDERS[speaker], "label": EMOTIONS[emotion], "transcript": TEXTS[text]}


def read_emodb(root: str) -> pd.DataFrame:
    """All utterances of ``<root>/wav``: ``ID, wav, duration, speaker, gender, label, transcript``.
    Misnamed files are warned about and skipped (counted in the log); unreadable ones are left to stage
    1's audio check, which lists them in ``rejected.csv``."""
    folder = os.path.join(root, "wav")
    if not os.path.isdir(folder):
        raise ManifestError(f"{folder}: not found; --root must be the EmoDB folder holding wav/")
    rows, skipped = [], Counter()
    for name in iter_files(folder):
        path = os.path.join(folder, name)
        fields = parse_file_name(path)
        if fields is None:
            logger.warning("%s: not an EmoDB file name (<spk><text><emotion><version>.wav); skipped", path)
            skipped["misnamed"] += 1
            continue
        duration = probe_duration(path)
        rows.append({"ID": f"emodb-{name[:-4]}", "wav": os.path.abspath(path), "duration": duration,
                     "speaker": f"emodb-{fields['speaker']}", "gender": fields["gender"], "label": fields["label"],
                     "transcript": fields["transcript"]})
    log_counts("emodb", len(rows), skipped)
    if not rows:
        raise ManifestError(f"{folder}: no EmoDB audio files found")
    return pd.DataFrame(rows)


def prepare_emodb(root: str, out: str, label_map: dict[str, str] | None = None, k: int | None = None,
                  protocol: str = "default", screen=None) -> dict:
    """Read EmoDB and write ``<out>/<protocol>/manifest.csv``, ``folds_lkso.json`` and ``summary.json``."""
    return write_speaker_fold_corpus(read_emodb(root), out, "emodb", label_map, k, protocol, screen=screen, language="de",
                                     default_k=DEFAULT_K)


def main(argv=None) -> None:
    speaker_fold_main(argv, prepare_emodb, __doc__.split("\n\n")[0], DEFAULT_K, "EmoDB folder holding wav/")


if __name__ == "__main__":
    run_main(main, "prepare_emodb")
