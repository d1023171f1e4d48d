"""IEMOCAP preparer on a fixture corpus written in the release's layout, quirks included."""

import json
import logging
import os

import pandas as pd
import pytest

import prepare_iemocap
from prepare_iemocap import lakomkin_label, lakomkin_strict_label, parse_emo_evaluation, prepare_iemocap as prepare
from ser_modules.data.folds import load_folds
from ser_modules.utils.fileio import ManifestError

from corpus_fixtures import IEMOCAP_HEADER as HEADER, A, F, H, N, S, X
from corpus_fixtures import iemocap_block, write_iemocap, write_iemocap_dialog

U = ["Surprise"]
VOTE_DIALOG = "Ses01F_impro02"
# One turn per case of the two vote rules, each worked out by hand:
# (turn, evaluators' C-E* labels, actor's self-rating C-F1/C-M1, lakomkin2018, lakomkin2018_strict).
VOTE_CASES = [
    ("F000", [A, N], "Anger", "ang", None),  # the self-rating is the second angry vote; strict ignores it: 1 + 1
    ("M000", [A, N], None, None, None),  # the same without the self-rating: one vote each
    ("F001", [H, H, N, N], None, "hap", None),  # 2 hap + 2 neu: tie broken ang > hap > neu > sad; strict: tie
    ("M001", [F, F, S], "Sadness", "sad", None),  # 2 fru + 2 sad: sad, the only class tied; strict: fru on top
    ("F002", [F, F, U, U], None, None, None),  # 2 fru + 2 sur: no class among the tied
    ("M002", [F + A, A], None, None, "ang"),  # E1 counts as fru only: 1 fru + 1 ang; strict counts E1's ang too
    ("F003", [H + A, A, H], None, "hap", None),  # first labels 2 hap + 1 ang; strict: hap 2 = ang 2, a tie
    ("M003", [X, H, S], None, "hap", "hap"),  # excited + happiness = 2 hap
    ("F004", [A, A, F, S], None, "ang", None),  # three different labels, ang on top with 2: kept; strict drops
    ("M004", [U, U, A], "Neutral", None, None),  # surprise on top with 2: not a class
]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    write_iemocap(str(root))
    return root


def write_vote_cases(root) -> None:
    """Add :data:`VOTE_CASES` to the fixture corpus as a Session 1 dialog (consensus ``xxx``, so the
    standard protocol does not change)."""
    turns = [(turn, 1.0 + i, 1.8 + i, "xxx", votes, f"Vote case number {i}.")
             for i, (turn, votes, *_) in enumerate(VOTE_CASES)]
    write_iemocap_dialog(root, 1, VOTE_DIALOG, turns)
    # The shared writer leaves out self-ratings: rewrite the EmoEvaluation file with them.
    blocks = [iemocap_block(f"{VOTE_DIALOG}_{turn}", start, end, label, votes, self_vote=case[2])
              for (turn, start, end, label, votes, _), case in zip(turns, VOTE_CASES)]
    with open(os.path.join(root, "Session1", "dialog", "EmoEvaluation", f"{VOTE_DIALOG}.txt"), "w") as f:
        f.write(HEADER + "".join(blocks))


@pytest.fixture
def vote_corpus(corpus):
    write_vote_cases(str(corpus))
    return corpus


def test_parse_emo_evaluation_reads_votes_and_vad(corpus):
    turns = parse_emo_evaluation(str(corpus / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"))
    assert len(turns) == 8
    m001 = turns[3]
    assert m001["ID"] == "Ses01F_impro01_M001" and m001["label"] == "xxx"
    assert m001["votes"] == [("E1", ["fru", "ang"]), ("E2", ["ang"]), ("E3", ["neu"])]
    assert (m001["start"], m001["end"], m001["valence"]) == (5.5, 6.5, 2.5)


def test_vote_rules_read_from_the_evaluation_file(tmp_path):
    write_vote_cases(str(tmp_path))
    turns = parse_emo_evaluation(str(tmp_path / "Session1" / "dialog" / "EmoEvaluation" / f"{VOTE_DIALOG}.txt"))
    assert [t["ID"][-4:] for t in turns] == [case[0] for case in VOTE_CASES]
    assert turns[0]["self_votes"] == [("F1", ["ang"])] and turns[3]["self_votes"] == [("M1", ["sad"])]
    assert turns[5]["votes"] == [("E1", ["fru", "ang"]), ("E2", ["ang"])]
    for t, (turn, _, _, expected, expected_strict) in zip(turns, VOTE_CASES):
        assert lakomkin_label(t["votes"], t["self_votes"]) == expected, turn
        assert lakomkin_strict_label(t["votes"]) == expected_strict, turn


def test_vote_rules_on_vote_lists():
    # (evaluators' votes, lakomkin2018, lakomkin2018_strict); the strict answers are those of the old lakomkin2018
    cases = [
        ([("E1", ["neu"]), ("E2", ["neu"]), ("E3", ["sad"])], "neu", "neu"),
        ([("E1", ["exc"]), ("E2", ["hap"]), ("E3", ["neu"])], "hap", "hap"),  # exc counts as hap
        ([("E1", ["ang"]), ("E2", ["fru"]), ("E3", ["sad"])], None, None),  # one vote each / three different
        ([("E1", ["fru", "ang"]), ("E2", ["ang"]), ("E3", ["neu"])], None, None),  # 1 fru 1 ang 1 neu / three labels
        ([("E1", ["fru"]), ("E2", ["fru"]), ("E3", ["ang"])], None, None),  # fru on top: not a target class
        ([("E1", ["ang"]), ("E2", ["ang"]), ("E3", ["sad"]), ("E4", ["sad"])], "ang", None),  # tie: ang first / dropped
        ([], None, None),
    ]
    for votes, expected, expected_strict in cases:
        assert lakomkin_label(votes, []) == expected, votes
        assert lakomkin_strict_label(votes) == expected_strict, votes
    assert lakomkin_label([("E1", ["neu"])], [("M1", ["neu"])]) == "neu"  # the self-rating is the second vote
    assert lakomkin_label([("E1", [])], [("M1", ["neu"])]) is None  # a line without a label casts no vote


def test_prepare_writes_turns_protocols_and_folds(corpus, tmp_path, caplog):
    out = tmp_path / "data"
    summary = prepare(str(corpus), str(out))
    turns = pd.read_csv(out / "turns.csv", keep_default_na=False)
    assert len(turns) == 8 + 12 + 4  # Session 2 M002 has no wav
    assert "have no wav file" in caplog.text and "partial IEMOCAP" in caplog.text

    std = pd.read_csv(out / "standard" / "manifest.csv", keep_default_na=False)
    # neu/exc/ang/sad of impro01 + 10 neu, hap, ang of script01 + neu, sad, ang, exc of Session 2
    assert len(std) == 4 + 12 + 4
    assert std["emotion"].value_counts().to_dict() == {"neu": 12, "hap": 3, "ang": 3, "sad": 2}
    row = std.set_index("ID").loc["Ses01F_impro01_M000"]
    assert row["transcript"] == "Do you have your forms?" and row["label"] == "exc" and row["emotion"] == "hap"
    assert row["speaker"] == "Ses01_M" and row["gender"] == "M" and row["session"] == 1
    assert row["votes"] == "E1:exc;E2:exc;E3:hap" and row["duration"] == pytest.approx(1.0)

    lak = pd.read_csv(out / "lakomkin2018" / "manifest.csv", keep_default_na=False).set_index("ID")
    assert "Ses01F_impro01_M002" in lak.index and lak.loc["Ses01F_impro01_M002", "emotion"] == "sad"
    assert "Ses01F_impro01_F001" not in lak.index and "Ses01F_impro01_M001" not in lak.index
    assert len(lak) == 5 + 12 + 4
    strict = pd.read_csv(out / "lakomkin2018_strict" / "manifest.csv", keep_default_na=False).set_index("ID")
    assert strict["emotion"].to_dict() == lak["emotion"].to_dict()  # no self-ratings, no case where the rules differ
    assert summary["protocols"]["standard"]["utterances"] == 20

    lospk = load_folds(str(out / "standard" / "folds_lospk.json"))
    assert [(f.test_speakers, f.valid_speakers) for f in lospk] == [
        (["Ses01_F"], ["Ses01_M"]), (["Ses01_M"], ["Ses01_F"]), (["Ses02_F"], ["Ses02_M"]), (["Ses02_M"], ["Ses02_F"])]
    f0 = lospk[0]
    assert set(f0.test) == set(std.loc[std["speaker"] == "Ses01_F", "ID"])
    assert set(f0.train) == set(std.loc[std["session"] == 2, "ID"])
    loso = load_folds(str(out / "standard" / "folds_loso.json"))
    assert [f.name for f in loso] == ["session1", "session2"]
    assert set(loso[1].test) == set(std.loc[std["session"] == 2, "ID"])
    assert set(loso[1].train) | set(loso[1].valid) == set(std.loc[std["session"] == 1, "ID"])
    assert len(loso[1].valid) == 4  # 10% of each class of session 1, at least one per class


def test_prepare_writes_both_vote_protocols(vote_corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "data"
    summary = prepare(str(vote_corpus), str(out))
    assert list(summary["protocols"]) == ["standard", "lakomkin2018", "lakomkin2018_strict"]
    assert summary["protocols"]["standard"]["utterances"] == 20  # the vote cases are all xxx
    for protocol, column in (("lakomkin2018", 3), ("lakomkin2018_strict", 4)):
        expected = {f"{VOTE_DIALOG}_{case[0]}": case[column] for case in VOTE_CASES if case[column]}
        manifest = pd.read_csv(out / protocol / "manifest.csv", keep_default_na=False).set_index("ID")
        assert manifest.loc[manifest["dialog"] == VOTE_DIALOG, "emotion"].to_dict() == expected, protocol
        assert not {"lakomkin_label", "lakomkin_strict_label"} & set(manifest.columns)
        n = 21 + len(expected)  # the 21 turns of the base fixture kept by both rules
        assert summary["protocols"][protocol]["utterances"] == n
        assert summary["protocols"][protocol]["fold_schemes"] == ["loso", "lospk"]
        assert summary["protocols"][protocol]["paper_counts"]["total"] == 6416
        assert sum(len(f.test) for f in load_folds(str(out / protocol / "folds_lospk.json"))) == n
        assert f"{protocol} vote rule: {n} utterances" in caplog.text and "(paper: 6416" in caplog.text
    turns = pd.read_csv(out / "turns.csv", keep_default_na=False).set_index("ID")
    f000 = turns.loc[f"{VOTE_DIALOG}_F000"]
    assert (f000["lakomkin_label"], f000["lakomkin_strict_label"]) == ("ang", "")


def test_turn_order_and_context(corpus, tmp_path):
    prepare(str(corpus), str(tmp_path / "data"))
    turns = pd.read_csv(tmp_path / "data" / "turns.csv", keep_default_na=False).set_index("ID")
    # Session 2 files are out of order: turn_index follows start times.
    s2 = turns[turns["dialog"] == "Ses02F_impro01"].sort_values("turn_index")
    assert s2.index.tolist() == ["Ses02F_impro01_F000", "Ses02F_impro01_M000", "Ses02F_impro01_F001", "Ses02F_impro01_M001"]
    assert turns.loc["Ses02F_impro01_F001", "prev_same"] == "Ses02F_impro01_F000"
    assert turns.loc["Ses02F_impro01_F001", "prev_other"] == "Ses02F_impro01_M000"
    assert turns.loc["Ses02F_impro01_F000", "prev_same"] == "" and turns.loc["Ses02F_impro01_F000", "prev_other"] == ""
    # The male actor's first turn is the earliest although written last.
    script = "Ses01M_script01_1"
    assert turns.loc[f"{script}_M000", "turn_index"] == 0
    assert turns.loc[f"{script}_F000", "prev_other"] == f"{script}_M000"
    # M001 follows ten female turns: his own previous turn is 11 turns back, beyond the window of 8.
    assert turns.loc[f"{script}_M001", "prev_same"] == ""
    assert turns.loc[f"{script}_M001", "prev_other"] == f"{script}_F009"
    # F008: the male turn is 9 turns back, out of the window.
    assert turns.loc[f"{script}_F008", "prev_other"] == ""
    assert turns.loc[f"{script}_F007", "prev_other"] == f"{script}_M000"


def test_full_corpus_count_check(corpus, tmp_path, monkeypatch):
    # Pretend the fixture is the full release: mismatching counts must stop the preparer.
    monkeypatch.setattr(prepare_iemocap, "FULL_CORPUS_TURNS", 24)
    with pytest.raises(ManifestError, match="standard_total: found 20, expected 5531"):
        prepare(str(corpus), str(tmp_path / "data"))
    prepare(str(corpus), str(tmp_path / "data2"), strict_counts=False)  # warns and goes on
    assert os.path.isfile(tmp_path / "data2" / "standard" / "manifest.csv")


def test_bad_input_names_the_file(corpus, tmp_path):
    bad = corpus / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    bad.write_text(HEADER + "[1.0 - x]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01\.txt:3: malformed turn line"):
        prepare(str(corpus), str(tmp_path / "data"))
    with pytest.raises(ManifestError, match="no Session1..Session5"):
        prepare(str(tmp_path), str(tmp_path / "data"))


def test_summary_json(corpus, tmp_path):
    prepare(str(corpus), str(tmp_path / "data"))
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert summary["protocols"]["lakomkin2018"]["paper_counts"]["total"] == 6416
    assert summary["protocols"]["lakomkin2018_strict"]["paper_counts"]["total"] == 6416
    assert summary["protocols"]["lakomkin2018_strict"]["fold_schemes"] == ["loso", "lospk"]
    assert summary["protocols"]["standard"]["fold_schemes"] == ["loso", "lospk"]
    assert summary["language"] == "en"


def test_manifest_attributes_are_the_evaluation_lines_valence_activation_dominance(corpus, tmp_path):
    import glob
    import re

    # every turn its own ratings, each of V, A, D different, so that a swapped column shows
    for n, path in enumerate(sorted(glob.glob(str(corpus / "Session*" / "dialog" / "EmoEvaluation" / "*.txt")))):
        text, count = open(path, encoding="utf-8").read(), iter(range(1000))
        text = re.sub(r"\[2\.5000, 2\.5000, 2\.5000\]", lambda _: (lambda i: f"[{1 + 0.25 * i:.4f}, {2 + 0.5 * n:.4f}, "
                                                                         f"{4.5 - 0.125 * i:.4f}]")(next(count)), text)
        open(path, "w", encoding="utf-8").write(text)
    prepare(str(corpus), str(tmp_path / "data"))
    manifest = pd.read_csv(tmp_path / "data" / "standard" / "manifest.csv", keep_default_na=False)
    # Straight from the files: "[start - end]<TAB>turn<TAB>label<TAB>[V, A, D]"; A is IEMOCAP's activation.
    lines = {}
    for path in glob.glob(str(corpus / "Session*" / "dialog" / "EmoEvaluation" / "*.txt")):
        for line in open(path, encoding="utf-8"):
            m = re.match(r"^\[[\d.]+ - [\d.]+\]\s+(\S+)\s+\S+\s+\[([\d.]+), ([\d.]+), ([\d.]+)\]", line)
            if m:
                lines[m.group(1)] = tuple(float(x) for x in m.groups()[1:])
    assert len(manifest) and set(manifest["ID"]) <= set(lines)
    for _, row in manifest.iterrows():
        assert (row["valence"], row["arousal"], row["dominance"]) == lines[row["ID"]]
    assert manifest["arousal"].nunique() > 1 and manifest["valence"].nunique() > 4  # not one constant per column
