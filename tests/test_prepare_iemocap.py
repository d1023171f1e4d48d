"""IEMOCAP preparer on a fixture corpus written in the release's layout, quirks included."""

import json
import os

import pandas as pd
import pytest

import prepare_iemocap
from prepare_iemocap import lakomkin_label, parse_emo_evaluation, prepare_iemocap as prepare
from ser_modules.fileio import ManifestError
from ser_modules.folds import load_folds

from corpus_fixtures import IEMOCAP_HEADER as HEADER, write_iemocap


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    write_iemocap(str(root))
    return root


def test_parse_emo_evaluation_reads_votes_and_vad(corpus):
    turns = parse_emo_evaluation(str(corpus / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"))
    assert len(turns) == 8
    m001 = turns[3]
    assert m001["ID"] == "Ses01F_impro01_M001" and m001["label"] == "xxx"
    assert m001["votes"] == [("E1", ["fru", "ang"]), ("E2", ["ang"]), ("E3", ["neu"])]
    assert (m001["start"], m001["end"], m001["valence"]) == (5.5, 6.5, 2.5)


def test_lakomkin_rule():
    assert lakomkin_label([("E1", ["neu"]), ("E2", ["neu"]), ("E3", ["sad"])]) == "neu"
    assert lakomkin_label([("E1", ["exc"]), ("E2", ["hap"]), ("E3", ["neu"])]) == "hap"  # exc counts as hap
    assert lakomkin_label([("E1", ["ang"]), ("E2", ["fru"]), ("E3", ["sad"])]) is None  # three different
    assert lakomkin_label([("E1", ["fru", "ang"]), ("E2", ["ang"]), ("E3", ["neu"])]) is None
    assert lakomkin_label([("E1", ["fru"]), ("E2", ["fru"]), ("E3", ["ang"])]) is None  # not a target class
    assert lakomkin_label([("E1", ["ang"]), ("E2", ["ang"]), ("E3", ["sad"]), ("E4", ["sad"])]) is None  # tie


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
    assert summary["protocols"]["standard"]["fold_schemes"] == ["loso", "lospk"]
    assert summary["language"] == "en"
