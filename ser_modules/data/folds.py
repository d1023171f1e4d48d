"""Speaker-independent cross-validation folds.

A fold is a named split of a manifest into ``train``, ``valid`` and ``test`` utterance ids, with
the test (and validation) speakers recorded. The test speakers of a fold never appear in its
training or validation sets; :func:`check_speaker_independence` verifies it for every fold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ser_modules.utils.fileio import ManifestError, read_json, write_json


@dataclass
class Fold:
    """One cross-validation fold: ids per split plus the held-out speakers."""

    name: str
    test_speakers: list[str]
    valid_speakers: list[str]
    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    shared_speakers: bool = False  # a published protocol that tests on training speakers (EmoBox's EmoDB)

    def split(self, name: str) -> list[str]:
        if name not in ("train", "valid", "test"):
            raise KeyError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)


def stratified_holdout(frame: pd.DataFrame, fraction: float, seed: int, by: str) -> set[str]:
    """Pick ``fraction`` of the rows of every ``by`` group (at least one per group), deterministic."""
    rng = np.random.default_rng(seed)
    held = set()
    for _, group in frame.groupby(by, sort=True):
        ids = sorted(group["ID"])
        k = max(1, int(round(fraction * len(ids))))
        held.update(rng.choice(ids, size=min(k, len(ids)), replace=False).tolist())
    return held


def leave_one_session_out(
    manifest: pd.DataFrame, valid_fraction: float = 0.1, seed: int = 0, session_column: str = "session"
) -> list[Fold]:
    """One fold per session: its speakers are the test set (Yeh 2020, SUPERB ER).

    Validation is a label-stratified ``valid_fraction`` of the other sessions' utterances, so model
    selection never sees a test speaker.
    """
    folds = []
    for session in sorted(manifest[session_column].unique(), key=str):
        test = manifest[manifest[session_column] == session]
        rest = manifest[manifest[session_column] != session]
        by = "emotion" if "emotion" in rest.columns else "speaker"
        valid = stratified_holdout(rest, valid_fraction, seed, by=by)
        folds.append(
            Fold(
                name=f"session{session}",
                test_speakers=sorted(test["speaker"].unique().tolist()),
                valid_speakers=[],
                train=[i for i in rest["ID"] if i not in valid],
                valid=[i for i in rest["ID"] if i in valid],
                test=test["ID"].tolist(),
            )
        )
    return folds


def leave_one_speaker_out(manifest: pd.DataFrame, partner: dict[str, str]) -> list[Fold]:
    """One fold per speaker (Lakomkin 2018): the speaker is the test set, ``partner[speaker]``
    (the other actor of the same session) the validation set, all remaining speakers train."""
    folds = []
    for speaker in sorted(manifest["speaker"].unique()):
        if speaker not in partner:
            raise ManifestError(f"speaker {speaker!r} has no session partner for leave-one-speaker-out")
        valid_spk = partner[speaker]
        folds.append(
            Fold(
                name=f"speaker{speaker}",
                test_speakers=[speaker],
                valid_speakers=[valid_spk],
                train=manifest.loc[~manifest["speaker"].isin([speaker, valid_spk]), "ID"].tolist(),
                valid=manifest.loc[manifest["speaker"] == valid_spk, "ID"].tolist(),
                test=manifest.loc[manifest["speaker"] == speaker, "ID"].tolist(),
            )
        )
    return folds


def speaker_groups(speakers: list[str], k: int, genders: dict[str, str] | None = None) -> list[list[str]]:
    """Partition speakers into groups of ``k`` (the last may be smaller or merged when it would be
    a lone speaker of a k > 1 split). With ``genders``, female and male speakers are interleaved so
    groups mix genders where possible."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ordered = sorted(speakers, key=str)
    if genders:
        by_gender = {}
        for s in ordered:
            by_gender.setdefault(genders.get(s, "?"), []).append(s)
        queues = [by_gender[g] for g in sorted(by_gender)]
        ordered = []
        while any(queues):
            for q in queues:
                if q:
                    ordered.append(q.pop(0))
    groups = [ordered[i : i + k] for i in range(0, len(ordered), k)]
    if len(groups) > 1 and len(groups[-1]) < k and len(groups[-1]) == 1 and k > 1:
        groups[-2].extend(groups.pop())
    return groups


def leave_k_speakers_out(manifest: pd.DataFrame, k: int = 1, genders: dict[str, str] | None = None) -> list[Fold]:
    """Speaker folds for corpora without sessions (RAVDESS, CREMA-D, EmoDB, generic CSV).

    Speakers are split into groups of ``k``; fold ``i`` tests group ``i``, validates on group
    ``i + 1`` (cyclically) and trains on the rest.
    """
    groups = speaker_groups(manifest["speaker"].unique().tolist(), k, genders)
    if len(groups) < 3:
        raise ManifestError(
            f"leave-{k}-speakers-out needs at least 3 speaker groups (train/valid/test); "
            f"the manifest has {manifest['speaker'].nunique()} speakers"
            + ("; give a smaller --k" if k > 1 else "")
        )
    folds = []
    for i, test_spk in enumerate(groups):
        valid_spk = groups[(i + 1) % len(groups)]
        folds.append(
            Fold(
                name=f"fold{i + 1:02d}",
                test_speakers=list(test_spk),
                valid_speakers=list(valid_spk),
                train=manifest.loc[~manifest["speaker"].isin(test_spk + valid_spk), "ID"].tolist(),
                valid=manifest.loc[manifest["speaker"].isin(valid_spk), "ID"].tolist(),
                test=manifest.loc[manifest["speaker"].isin(test_spk), "ID"].tolist(),
            )
        )
    return folds


def check_speaker_independence(manifest: pd.DataFrame, folds: list[Fold]) -> None:
    """Raise if any fold's test speakers occur in its train or valid split (unless the fold is marked
    ``shared_speakers``), or splits overlap."""
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    for fold in folds:
        train, valid, test = set(fold.train), set(fold.valid), set(fold.test)
        if train & valid or train & test or valid & test:
            raise ManifestError(f"fold {fold.name}: an utterance is in two splits")
        if fold.shared_speakers:
            continue
        test_spk = {speaker_of[i] for i in test}
        seen = {speaker_of[i] for i in train | valid}
        if test_spk & seen:
            raise ManifestError(f"fold {fold.name}: test speaker(s) {sorted(test_spk & seen)} also in train/valid")


def save_folds(path: str, scheme: str, folds: list[Fold]) -> None:
    # shared_speakers is written only where set: fold files of speaker-independent schemes stay as they were
    records = [{k: v for k, v in asdict(f).items() if k != "shared_speakers" or v} for f in folds]
    write_json(path, {"scheme": scheme, "folds": records})


def load_folds(path: str) -> list[Fold]:
    data = read_json(path)
    try:
        return [Fold(**f) for f in data["folds"]]
    except (KeyError, TypeError) as err:
        raise ManifestError(f"{path}: not a folds file ({err})") from err
