"""Cross-corpus evaluation (--eval-corpus): finished experiments scored on other corpora, training nothing."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from background import started, starts
from corpus_fixtures import write_csv_corpus
from recipe_runs import LAS_TINY, run_recipe
from ser_modules.data.eval_corpora import eval_names, map_onto_training_classes
from ser_modules.report.cross_corpus import eval_metrics, fold_ensemble
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_times(exp) -> dict:
    """Modification times of every trained model (ASR, adapted ASR, SER runs) of an experiment."""
    times = {}
    for root, _, files in os.walk(exp):
        for name in files:
            if name in ("model.pt", "model.ckpt") or name.endswith(".ckpt"):
                path = os.path.join(root, name)
                times[os.path.relpath(path, exp)] = os.path.getmtime(path)
    return times


def hand_ua(true, predicted) -> float:
    """Mean recall over the classes present in ``true``, by counting."""
    recalls = []
    for c in sorted(set(true)):
        idx = [i for i, t in enumerate(true) if t == c]
        recalls.append(sum(predicted[i] == c for i in idx) / len(idx))
    return sum(recalls) / len(recalls)


def add_eval_corpora(source, tmp_path, recipe, tiny_demo, extra, eval_args):
    """A copy of a finished tiny experiment rerun from stage 1 with evaluation corpora; returns (exp, proc, times)."""
    exp = tmp_path / "exp"
    shutil.copytree(source, exp)
    before = model_times(exp)
    assert any(k.startswith("ser") for k in before)
    proc = run_recipe(recipe, exp, tiny_demo, extra + eval_args)
    return exp, proc, before


@pytest.fixture(scope="module")
def ctc_cross(ctc_exp):
    """The tiny ctc_transfer experiment, run with a RAVDESS-layout and a CSV evaluation corpus (conftest)."""
    exp, proc = ctc_exp
    classes = sorted(pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv")["emotion"].unique())
    assert classes == ["ang", "hap", "sad"]  # the CSV corpus's map (happy:hap,sad:sad) leaves ang without data
    return exp, proc, classes


def test_evaluation_corpora_are_prepared_mapped_and_counted(ctc_cross):
    exp, proc, classes = ctc_cross
    assert "scoring 16 saved models on evaluation corpora ravdess, csv" in proc.stderr  # 4 variants x 2 folds x 2
    rav = pd.read_json(exp / "data" / "eval" / "ravdess" / "summary.json", typ="series")
    # RAVDESS fixture: neutral 2, calm 1 -> neu; happy 2; sad 2; angry 2; fearful, disgust, surprised dropped
    want = {"neu": 3, "hap": 2, "sad": 2, "ang": 2}
    assert rav["classes"] == {c: want[c] for c in classes}
    assert rav["dropped"] == {"disgust": 1, "fearful": 1, "surprised": 1,
                              **{lab: n for lab, c, n in [("neutral", "neu", 2), ("calm", "neu", 1), ("happy", "hap", 2),
                                                           ("sad", "sad", 2), ("angry", "ang", 2)] if c not in classes}}
    csv = pd.read_json(exp / "data" / "eval" / "csv" / "summary.json", typ="series")
    assert csv["missing_classes"] == [classes[0]] and csv["classes"][classes[0]] == 0
    stores = pd.read_json(exp / "dump" / "stores_eval-ravdess.json", typ="series")
    assert list(stores["asr"]) == ["pretrained"]
    manifest = pd.read_csv(exp / "data" / "eval" / "ravdess" / "manifest.csv")
    hand = pd.read_csv(exp / "dump" / stores["handcrafted"]["folder"] / "index.csv")
    assert sorted(hand["ID"]) == sorted(manifest["ID"])
    assert "offset_mfcc_pitch@1" not in hand.columns  # no augmented copies of evaluation data


def test_cross_corpus_scores_equal_a_hand_computation(ctc_cross):
    exp, _, classes = ctc_cross
    rows = pd.read_csv(exp / "cross_corpus.csv")
    assert set(rows["model"]) == {"MP-2", "baseline-8", "Progressive-1", "MP-2-dim"}
    assert set(rows["corpus"]) == {"ravdess", "csv"}
    within = pd.read_csv(exp / "results.csv").set_index("model")
    for (corpus, model), row in rows.set_index(["corpus", "model"]).iterrows():
        folder = exp / "cross" / corpus / model
        frames = [pd.read_csv(folder / fold / "run0" / "predictions.csv", keep_default_na=False)
                  for fold in sorted(os.listdir(folder)) if not fold.startswith(".")]
        assert len(frames) == int(within.loc[model, "folds"])
        uas = [hand_ua(f["true"].tolist(), f["predicted"].tolist()) for f in frames]
        assert row["UA_mean"] == pytest.approx(np.mean(uas), abs=1e-4)
        assert row["UA_std"] == pytest.approx(np.std(uas, ddof=1), abs=1e-4)
        assert row["UA_drop"] == pytest.approx(within.loc[model, "UA_mean"] - np.mean(uas), abs=2e-4)
        probs = sum(f.sort_values("ID")[[f"p_{c}" for c in classes]].to_numpy() for f in frames) / len(frames)
        truth = frames[0].sort_values("ID")["true"].tolist()
        assert row["ensemble_UA"] == pytest.approx(hand_ua(truth, [classes[i] for i in probs.argmax(1)]), abs=1e-4)
    # the multitask variant's attributes where the corpus carries them (the CSV list), by formula
    from ser_modules.ser.dimensional import concordance_correlation

    indexed = rows.set_index(["corpus", "model"])
    assert indexed.loc[("ravdess", "MP-2-dim")][["CCC_arousal_mean", "CCC_valence_mean"]].isna().all()
    folder = exp / "cross" / "csv" / "MP-2-dim"
    frames = [pd.read_csv(folder / fold / "run0" / "predictions.csv") for fold in sorted(os.listdir(folder))
              if not fold.startswith(".")]
    manifest = pd.read_csv(exp / "data" / "eval" / "csv" / "manifest.csv").set_index("ID")
    for attribute in ("arousal", "valence", "dominance"):
        for f in frames:  # the CSV list's values, and CCC per fold model
            np.testing.assert_allclose(f[f"true_{attribute}"], manifest.loc[f["ID"], attribute].astype(float))
        ccc = [concordance_correlation(f[f"true_{attribute}"], f[f"pred_{attribute}"]) for f in frames]
        row = indexed.loc[("csv", "MP-2-dim")]
        assert row[f"CCC_{attribute}_mean"] == pytest.approx(np.mean(ccc), abs=1e-4)
        assert row[f"CCC_{attribute}_drop"] == pytest.approx(within.loc["MP-2-dim", f"CCC_{attribute}_mean"]
                                                             - np.mean(ccc), abs=2e-4)
    text = (exp / "RESULTS.md").read_text()
    assert "## Cross-corpus evaluation" in text and "ravdess UA drop" in text and "csv CCC arousal" in text
    assert f"no utterance of training class(es) {classes[0]}" in text
    assert (exp / "plots" / "cross_confusion_ravdess.png").is_file()
    assert (exp / "plots" / "cross_confusion_csv.png").is_file()


@pytest.mark.parametrize("which", ["ctc", "las", "upstream"])
def test_scoring_a_saved_model_reproduces_its_training_predictions(which, request, tmp_path):
    """The no-training path (model.pt + model.json) gives the probabilities stage 5 wrote for a fold's test
    speakers, for every variant type: MP, baseline, Progressive (ctc), IAAN on a per-fold adapted LAS with
    dialog context (las), weighted sums, RNN, IAAN and the eGeMAPS SVM (upstream)."""
    import json

    from ser_modules.data.folds import load_folds
    from ser_modules.ser.inputs import SERInputs
    from ser_modules.ser.training import predict_saved_run
    from ser_modules.ser.variants import VariantSpec

    exp = request.getfixturevalue(f"{which}_exp")[0]
    protocol = next(p for p in os.listdir(exp / "data" / "emotion") if (exp / "dump" / f"stores_{p}.json").is_file())
    manifest = pd.read_csv(exp / "data" / "emotion" / protocol / "manifest.csv", keep_default_na=False)
    classes = sorted(manifest["emotion"].unique())
    fold = load_folds(str(exp / "data" / "emotion" / protocol / "folds_loso.json"))[-1]
    inputs = SERInputs(str(exp / "dump" / f"stores_{protocol}.json"))
    results = pd.read_csv(exp / "results.csv")
    assert len(results) >= 2
    for name, config in zip(results["model"], results["config"]):
        spec = VariantSpec.from_dict(json.loads(config)["variant"])
        run_dir = exp / "ser" / name / fold.name / "run0"
        test = manifest[manifest["ID"].isin(fold.test)]
        got = predict_saved_run(spec, fold.name, 0, str(run_dir), test, classes, inputs, str(tmp_path / name))
        want = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
        got, want = got.sort_values("ID"), want.sort_values("ID")
        cols = [f"p_{c}" for c in classes]
        assert got["ID"].tolist() == want["ID"].tolist(), name
        np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), atol=2e-6, err_msg=name)
    if which == "las":  # IAAN on a corpus without dialog context: zero context turns, other probabilities
        alone = test.assign(prev_same="", prev_other="")
        blind = predict_saved_run(spec, fold.name, 0, str(run_dir), alone, classes, inputs, str(tmp_path / "blind"))
        assert np.isfinite(blind[cols].to_numpy()).all()
        assert not np.allclose(blind.sort_values("ID")[cols].to_numpy(), want[cols].to_numpy(), atol=1e-4)
    assert set(results["type"]) >= {"ctc": {"mp", "baseline", "progressive"}, "las": {"iaan"},
                                    "upstream": {"weighted", "rnn", "iaan", "reference"}}[which]


def test_stage6_refuses_stale_or_missing_cross_predictions(ctc_cross, tmp_path):
    from ser_modules.data.eval_corpora import listed_eval_corpora
    from ser_modules.report.cross_corpus import cross_corpus_rows

    exp = tmp_path / "exp"
    shutil.copytree(ctc_cross[0], exp)  # the shared experiment stays as it is
    classes = ctc_cross[2]
    results = pd.read_csv(exp / "results.csv")
    corpora = listed_eval_corpora(str(exp / "data"))
    folds = int(results["folds"].iloc[0])
    run = exp / "cross" / "ravdess" / "MP-2" / "session1" / "run0"
    inputs = (run / "inputs.json").read_text()
    try:
        (run / "inputs.json").write_text(inputs.replace('"model": "', '"model": "0'))  # the model changed since
        with pytest.raises(ManifestError, match="1 stale prediction file"):
            cross_corpus_rows(str(exp), corpora, results, classes, str(exp / "data"), folds)
        rows = cross_corpus_rows(str(exp), corpora, results, classes, str(exp / "data"), folds, allow_incomplete=True)
        assert not rows.set_index(["corpus", "model"]).loc[("ravdess", "MP-2"), "complete"]
        assert rows["complete"].sum() == len(rows) - 1
    finally:
        (run / "inputs.json").write_text(inputs)
    with pytest.raises(ManifestError, match=f"predictions of {folds} of the {folds + 1} fold models"):
        cross_corpus_rows(str(exp), corpora, results, classes, str(exp / "data"), folds + 1)


def test_a_changed_label_map_file_prepares_the_corpus_again(ctc_cross, tmp_path, caplog):
    import json
    import logging

    from prepare_eval import main as prepare_eval

    exp, _, classes = ctc_cross
    data = tmp_path / "data"
    shutil.copytree(exp / "data" / "emotion" / "lakomkin2018", data / "emotion" / "lakomkin2018")
    csv = write_csv_corpus(str(tmp_path / "csv"))
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"happy": "hap", "sad": "sad"}))
    args = ["--data-dir", str(data), "--protocol", "lakomkin2018", "--eval-corpus", "csv", "--eval-root", csv,
            "--eval-label-map", str(label_map), "--nj", "1"]
    prepare_eval(args)
    summary = data / "eval" / "csv" / "summary.json"
    assert json.loads(summary.read_text())["utterances"] == 4
    with caplog.at_level(logging.INFO):
        prepare_eval(args)
    assert "evaluation corpus csv already prepared (same inputs), reused" in caplog.text
    label_map.write_text(json.dumps({"happy": "hap"}))  # same file name, other contents
    prepare_eval(args)
    assert json.loads(summary.read_text())["utterances"] == 2
    assert json.loads((data / "eval" / "corpora.json").read_text()) == {"corpora": ["csv"]}


def test_cross_corpus_scoring_as_a_cluster_job_equals_the_pool(ctc_cross, tmp_path):
    """Stage 5's --launcher slurm path for evaluation corpora, run by submitit's local executor: one job
    scores every fold model of a variant on a corpus, with its device resolved in the job."""
    from ser_modules.data.eval_corpora import eval_manifest
    from ser_modules.data.folds import load_folds
    from ser_modules.ser.cross_corpus import eval_job, eval_stores, open_eval_inputs
    from ser_modules.utils.jobs import submit_jobs

    exp, _, classes = ctc_cross
    # as recipe_runs.CTC_TINY trained it
    variant = {"name": "MP-2", "type": "mp", "asr": "pretrained", "layer": "gru1", "max_epochs": 3, "asr_norm": "train"}
    state = {"out": str(exp / "ser"), "cross": str(tmp_path / "cross"), "classes": classes, "n_runs": 1,
             "folds": load_folds(str(exp / "data" / "emotion" / "lakomkin2018" / "folds_loso.json")),
             "eval_stores": eval_stores(str(exp), ["ravdess"]), "device_request": "auto",
             "eval_manifests": {"ravdess": eval_manifest(str(exp / "data"), "ravdess")}}
    results = list(submit_jobs(eval_job, [(variant, "ravdess")], state, str(tmp_path / "jobs"), "submitit-local",
                               open_eval_inputs, name="cross-test"))
    folds = [f.name for f in state["folds"]]
    assert results == [("ravdess", "MP-2", len(folds), 0)]
    for fold in folds:
        got = pd.read_csv(tmp_path / "cross" / "ravdess" / "MP-2" / fold / "run0" / "predictions.csv")
        want = pd.read_csv(exp / "cross" / "ravdess" / "MP-2" / fold / "run0" / "predictions.csv")
        pd.testing.assert_frame_equal(got, want)


@starts("las_second_corpus")
def _start_las_second_corpus(bg, session):
    """The tiny las_adapt experiment rerun from stage 1 with the second demo corpus as evaluation corpus."""
    demo, las, root = bg.start("tiny_demo"), bg.start("las_exp"), bg.tmp.mktemp("las_second_corpus")

    def build():
        from make_demo_corpus import DemoConfig, make_demo_corpus

        other = root / "other"
        make_demo_corpus(str(other), DemoConfig(seed=5, sessions=1, dialogs_per_session=2, turns_per_dialog=6,
                                                asr_train_minutes=0, asr_eval_minutes=0, style="other"), nj=1)
        return add_eval_corpora(las.result()[0], root, "las_adapt", demo.result(), LAS_TINY,
                                ["--eval-corpus", "demo-other", "--eval-root", str(other)])

    return bg.run(build)


las_second_corpus = started("las_second_corpus")


def test_las_adapted_models_and_the_second_demo_corpus(las_second_corpus):
    """IAAN on per-fold adapted LAS layers: the evaluation corpus is dumped by each fold's adapted model,
    and the second demo corpus (an IEMOCAP layout) gives IAAN its dialog context."""
    exp, proc, before = las_second_corpus.result()
    assert model_times(exp) == before  # no ASR, adapted or SER model written again
    assert "stage 3: 0 of" not in proc.stderr and "trainings already finished (same inputs), not repeated" in proc.stderr
    stores = pd.read_json(exp / "dump" / "stores_eval-demo-other.json", typ="series")
    trained = exp / "ser" / "IAAN-structured-pblstm2"
    folds = sorted(f for f in os.listdir(trained) if not f.startswith(".") and (trained / f).is_dir())
    assert sorted(stores["asr"]) == sorted(["pretrained"] + [f"{m}/{f}" for m in ("finetuned", "structured")
                                                               for f in folds])
    for fold in folds:  # each fold's IAAN read the evaluation corpus through that fold's adapted LAS
        used = pd.read_json(exp / "cross" / "demo-other" / "IAAN-structured-pblstm2" / fold / "run0" / "inputs.json",
                            typ="series")["stores"]
        assert used == ["/".join(stores["asr"][f"structured/{fold}"]["folder"].split("/")[-2:])]
    summary = pd.read_json(exp / "data" / "eval" / "demo-other" / "summary.json", typ="series")
    assert summary["dialog_context"] and summary["speakers"] == 2
    rows = pd.read_csv(exp / "cross_corpus.csv")
    assert set(rows["model"]) == {"IAAN-pretrained-pblstm1", "IAAN-structured-pblstm2"}
    text = (exp / "RESULTS.md").read_text()
    assert "IAAN reads zero context" not in text


# ----------------------------------------------------------------------------------------------
# Label mapping and metrics


def test_label_mapping_drops_counts_and_refuses_a_foreign_class():
    frame = pd.DataFrame({"ID": list("abcdef"), "label": ["Anger", "happy", "fear", "calm", "sad", "fear"]})
    kept, counts = map_onto_training_classes(frame, "label", None, ["ang", "hap", "neu", "sad"], "x", default_names=True)
    assert kept["emotion"].tolist() == ["ang", "hap", "neu", "sad"]
    assert counts == {"dropped": {"fear": 2}, "classes": {"ang": 1, "hap": 1, "neu": 1, "sad": 1}, "missing_classes": []}
    kept, counts = map_onto_training_classes(frame, "label", {"happy": "hap", "sad": "sad"}, ["ang", "hap", "sad"], "x")
    assert counts["missing_classes"] == ["ang"] and counts["dropped"] == {"Anger": 1, "calm": 1, "fear": 2}
    with pytest.raises(ManifestError, match=r"x: the label map sends labels to \['fea'\], which the training corpus lacks"):
        map_onto_training_classes(frame, "label", {"fear": "fea", "sad": "sad"}, ["ang", "sad"], "x")
    with pytest.raises(ManifestError, match="no label maps onto the training classes"):
        map_onto_training_classes(frame, "label", None, ["joy", "rage"], "x")
    # without named defaults (a CSV corpus) only labels equal to a training class are kept
    kept, _ = map_onto_training_classes(frame, "label", None, ["ang", "sad"], "x")
    assert kept["emotion"].tolist() == ["sad"]


def test_eval_metrics_and_fold_ensemble_by_hand():
    true = ["a", "a", "b", "b", "b"]
    pred = ["a", "c", "b", "b", "a"]  # class c is a training class absent here: counts as an error
    m = eval_metrics(true, pred)
    assert m["UA"] == pytest.approx((1 / 2 + 2 / 3) / 2) and m["WA"] == pytest.approx(3 / 5)
    f1_a, f1_b = 2 * 0.5 * 0.5 / 1.0, 2 * 1.0 * (2 / 3) / (1 + 2 / 3)
    assert m["F1"] == pytest.approx((f1_a + f1_b) / 2)
    preds = pd.DataFrame({"ID": ["u1", "u2", "u1", "u2"], "true": ["a", "b", "a", "b"], "fold": ["f1", "f1", "f2", "f2"],
                          "p_a": [0.6, 0.3, 0.2, 0.45], "p_b": [0.4, 0.7, 0.8, 0.55]})
    ens = fold_ensemble(preds, ["a", "b"])
    assert ens["predicted"].tolist() == ["b", "b"] and ens["p_a"].tolist() == pytest.approx([0.4, 0.375])
    assert eval_names(["csv", "emodb", "csv"]) == ["csv", "emodb", "csv-2"]


def test_notes_state_language_mismatch_missing_classes_and_context():
    from ser_modules.report.cross_corpus import corpus_notes

    emodb = {"name": "emodb", "kind": "emodb", "root": "/data/emodb", "utterances": 339, "speakers": 10,
             "classes": {"ang": 127, "hap": 71, "neu": 79, "sad": 62}, "dropped": {"boredom": 81, "disgust": 46},
             "missing_classes": [], "language": "de", "dialog_context": False}
    demo = {**emodb, "name": "demo-other", "kind": "demo-other", "language": "en", "dialog_context": True,
            "dropped": {}, "classes": {"ang": 0, "hap": 3}, "missing_classes": ["ang"]}
    prepared = {"emotion_language": "en", "asr_language": "en"}
    german, other = corpus_notes([emodb, demo], prepared, [{"name": "IAAN", "type": "iaan"}])
    assert "339 utterances of 10 speakers, classes ang 127, hap 71, neu 79, sad 62" in german
    assert "; 127 dropped (by label: {'boredom': 81, 'disgust': 46})" in german
    assert "its speech is German while the training corpus is English and the ASR is English: the scores mix" in german
    unknown = corpus_notes([emodb], {"emotion_language": "", "asr_language": "en"}, [])[0]  # a CSV corpus: unknown
    assert "while the ASR is English" in unknown and "training corpus is" not in unknown
    assert "IAAN reads zero context turns" in german and "IAAN" not in other
    assert "German" not in other and "dropped" not in other
    assert "no utterance of training class(es) ang: UA and F1 are over the other classes" in other
