"""EmoBox's evaluation protocol (Ma et al., Interspeech 2024; github.com/emo-box/EmoBox) as a fold scheme.

EmoBox publishes, per corpus, its folds as JSONL files ``data/<corpus>/fold_<k>/<corpus>_{train,test}_fold_<k>.jsonl``
(one utterance per line: ``key``, ``wav``, ``emo``, ...) and ``data/<corpus>/label_map.json`` (the corpus's
labels onto EmoBox's classes, e.g. IEMOCAP's ``exc`` onto Happy). :func:`emobox_folds` reads a checkout of
that folder, matches every key to an utterance of a prepared manifest, checks that EmoBox's classes and the
manifest's are the same partition of the utterances, and returns the folds as :class:`Fold` objects.

EmoBox publishes no validation lists (a ``<corpus>_valid_fold_<k>.jsonl`` is used where one exists; EmoBox's
example code splits a random 20% of the training utterances off); the rule here (:func:`validation_split`): where a fold's test speakers
are not among its training speakers, about 10% of the training speakers (at least 1; an even number,
half female and half male, when genders are known), taken in order from the next folds' test speakers,
validate; where EmoBox shares speakers between training and test (EmoDB), a label-stratified 10% of the
training utterances validates. Test sets are EmoBox's, untouched.
"""

from __future__ import annotations

import json
import os
import re

import pandas as pd

from ser_modules.data.folds import Fold, stratified_holdout
from ser_modules.utils.fileio import ManifestError, read_json

# Our corpus kinds -> EmoBox's folder names under data/.
EMOBOX_NAMES = {"ravdess": "ravdess", "crema-d": "cremad", "emodb": "emodb", "iemocap": "iemocap", "demo": "iemocap"}
VALID_FRACTION = 0.1
_FOLD_DIR = re.compile(r"^fold_(\d+)$")


def emobox_corpus_dir(emobox_dir: str, corpus: str) -> str:
    """The folder of ``corpus`` (our kind, e.g. ``crema-d``) in an EmoBox checkout (its root or its ``data/``)."""
    name = EMOBOX_NAMES.get(corpus, corpus)
    for candidate in (os.path.join(emobox_dir, "data", name), os.path.join(emobox_dir, name)):
        if os.path.isdir(candidate):
            return candidate
    raise ManifestError(f"{emobox_dir}: no EmoBox folder data/{name} (give the EmoBox checkout or its data/ folder)")


def read_jsonl(path: str) -> list[dict]:
    """The records of an EmoBox JSONL file; a bad line is an error naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{n}: not a JSON line ({err})") from err
            if not isinstance(record, dict) or "key" not in record or "emo" not in record:
                raise ManifestError(f"{path}:{n}: an EmoBox record needs 'key' and 'emo'")
            records.append(record)
    return records


def read_emobox(corpus_dir: str) -> tuple[dict[str, str], list[tuple]]:
    """``(label_map, [(k, train records, test records, valid records or None), ...])`` of an EmoBox corpus
    folder, folds in order."""
    name = os.path.basename(os.path.normpath(corpus_dir))
    map_path = os.path.join(corpus_dir, "label_map.json")
    if not os.path.isfile(map_path):
        raise ManifestError(f"{map_path}: EmoBox label map not found")
    label_map = {str(k): str(v) for k, v in read_json(map_path).items()}
    folds = []
    for entry in sorted(os.listdir(corpus_dir)):
        m = _FOLD_DIR.match(entry)
        if not m:
            continue
        k = int(m.group(1))
        paths = [os.path.join(corpus_dir, entry, f"{name}_{split}_fold_{k}.jsonl") for split in ("train", "test")]
        for path in paths:
            if not os.path.isfile(path):
                raise ManifestError(f"{path}: EmoBox fold file not found")
        valid = os.path.join(corpus_dir, entry, f"{name}_valid_fold_{k}.jsonl")  # official lists, where a corpus has them
        folds.append((k, read_jsonl(paths[0]), read_jsonl(paths[1]), read_jsonl(valid) if os.path.isfile(valid) else None))
    if not folds:
        raise ManifestError(f"{corpus_dir}: no EmoBox fold_<k> folders")
    return label_map, sorted(folds, key=lambda f: f[0])


def key_matcher(manifest: pd.DataFrame):
    """A function from an EmoBox record to a manifest ID (or None): the key itself, the key without its
    ``<corpus>-`` prefix (EmoBox's IEMOCAP keys), or the audio file's name without extension."""
    ids = set(manifest["ID"])
    by_stem: dict[str, str] = {}
    for utt, wav in zip(manifest["ID"], manifest["wav"]):
        by_stem.setdefault(os.path.splitext(os.path.basename(str(wav)))[0], utt)

    def match(record: dict) -> str | None:
        key = str(record["key"])
        if key in ids:
            return key
        if "-" in key and key.split("-", 1)[1] in ids:
            return key.split("-", 1)[1]
        stem = os.path.splitext(os.path.basename(str(record.get("wav", ""))))[0]
        return by_stem.get(stem) if stem else None

    return match


def matched_ids(records: list[dict], match, where: str) -> list[str]:
    """Manifest IDs of ``records``; any unmatched key is refused with one line naming the first and the count."""
    ids = [match(r) for r in records]
    missing = [r["key"] for r, i in zip(records, ids) if i is None]
    if missing:
        raise ManifestError(f"{where}: EmoBox key {missing[0]!r} matches no utterance of the corpus "
                            f"({len(missing)} of {len(records)} keys unmatched; is this the corpus EmoBox lists, "
                            "with every file readable?)")
    return ids


def check_classes(records: list[dict], ids: list[str], label_map: dict[str, str], emotion_of: dict[str, str],
                  where: str) -> dict[str, str]:
    """EmoBox class -> manifest class; a class split across two of the other side's is an error."""
    pairs: dict[str, str] = {}
    back: dict[str, str] = {}
    for record, utt in zip(records, ids):
        ours, theirs = emotion_of[utt], label_map.get(str(record["emo"]), str(record["emo"]))
        if pairs.setdefault(theirs, ours) != ours or back.setdefault(ours, theirs) != theirs:
            raise ManifestError(f"{where}: EmoBox's class {theirs!r} of {record['key']!r} does not correspond to "
                                f"one class of the protocol ({ours!r} here, {pairs[theirs]!r} / {back[ours]!r} "
                                "elsewhere): choose the protocol with EmoBox's class set")
    return pairs


def validation_split(train: list[str], test: list[str], later_tests: list[list[str]], speaker_of: dict[str, str],
                     gender_of: dict[str, str], emotion_of: dict[str, str], seed: int = 0) -> tuple[list[str], list[str], bool]:
    """``(train, valid, shared_speakers)`` of one EmoBox fold by the rule of the module docstring."""
    train_speakers = sorted({speaker_of[i] for i in train})
    test_speakers = {speaker_of[i] for i in test}
    if test_speakers & set(train_speakers):  # EmoBox shares speakers: hold out utterances
        frame = pd.DataFrame({"ID": train, "emotion": [emotion_of[i] for i in train]})
        held = stratified_holdout(frame, VALID_FRACTION, seed, by="emotion")
        return [i for i in train if i not in held], [i for i in train if i in held], True
    n = max(1, round(VALID_FRACTION * len(train_speakers)))
    genders = {gender_of.get(s, "") for s in train_speakers}
    balanced = genders == {"F", "M"}
    if balanced:
        n += n % 2
    order = []  # training speakers: the next folds' test speakers first, then the rest, each in sorted order
    for group in later_tests:
        order += sorted({speaker_of[i] for i in group} & set(train_speakers) - set(order))
    order += [s for s in train_speakers if s not in order]
    chosen: list[str] = []
    if balanced:
        for gender in ("F", "M"):
            chosen += [s for s in order if gender_of.get(s) == gender][: n // 2]
    else:
        chosen = order[:n]
    valid_speakers = set(chosen)
    return ([i for i in train if speaker_of[i] not in valid_speakers],
            [i for i in train if speaker_of[i] in valid_speakers], False)


def emobox_folds(manifest: pd.DataFrame, emobox_dir: str, corpus: str, seed: int = 0,
                 rejected: pd.DataFrame | None = None) -> tuple[list[Fold], dict]:
    """EmoBox's folds of ``corpus`` over ``manifest`` (a prepared protocol) and a summary of them.

    Keys of utterances stage 1's audio check ``rejected`` (``ID, wav``) are left out of their folds and counted."""
    corpus_dir = emobox_corpus_dir(emobox_dir, corpus)
    label_map, raw = read_emobox(corpus_dir)
    known = manifest[["ID", "wav"]]
    if rejected is not None and len(rejected):
        known = pd.concat([known, rejected[["ID", "wav"]]], ignore_index=True)
    bad = set() if rejected is None else set(rejected["ID"])
    match = key_matcher(known)
    emotion_of = dict(zip(manifest["ID"], manifest["emotion"]))
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    gender_of = dict(zip(manifest["speaker"], manifest["gender"])) if "gender" in manifest.columns else {}
    splits, classes, left_out = [], {}, set()
    for k, *lists in raw:
        where = os.path.join(corpus_dir, f"fold_{k}")
        matched = []
        for records in lists:
            if records is None:
                matched.append(None)
                continue
            ids = matched_ids(records, match, where)
            left_out.update(i for i in ids if i in bad)
            records, ids = [r for r, i in zip(records, ids) if i not in bad], [i for i in ids if i not in bad]
            classes.update(check_classes(records, ids, label_map, emotion_of, where))
            matched.append(ids)
        splits.append((k, *matched))
    folds = []
    for n, (k, train, test, official) in enumerate(splits):
        later = [t for _, _, t, _ in splits[n + 1:] + splits[:n]]
        if official is not None:  # EmoBox's own validation list
            fit, valid = train, official
            shared = bool({speaker_of[i] for i in test} & {speaker_of[i] for i in train + valid})
        else:
            fit, valid, shared = validation_split(train, test, later, speaker_of, gender_of, emotion_of, seed)
        folds.append(Fold(name=f"fold{k}", test_speakers=sorted({speaker_of[i] for i in test}),
                          valid_speakers=[] if shared else sorted({speaker_of[i] for i in valid}),
                          train=fit, valid=valid, test=test, shared_speakers=shared))
    summary = {"emobox_dir": os.path.abspath(corpus_dir), "folds": len(folds), "classes": dict(sorted(classes.items())),
               "shared_speakers": any(f.shared_speakers for f in folds),
               "utterances": len({i for f in folds for i in f.test}), "rejected_left_out": len(left_out)}
    return folds, summary
