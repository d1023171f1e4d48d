"""Both recipes end to end on the tiny demo corpus (tiny models), then inference and scoring on the
trained experiments."""

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from background import started, starts
from recipe_runs import CTC_TINY, REPO, run_recipe
from ser_modules.infer import main as infer_main
from ser_modules.inference.recognizer import EmotionRecognizer


def test_ctc_recipe_writes_every_stage_output(ctc_exp):
    exp, proc = ctc_exp
    for path in ("asr/model.pt", "asr_results.csv", "RESULTS.md", "results.csv", "plots/confusion_MP-2.png",
                 "plots/tsne_pretrained_gru1.png", "plots/loudness_gru1.png", "plots/ua_per_layer.png",
                 "plots/attributes_MP-2-dim.png"):
        assert (exp / path).is_file(), path
    results = pd.read_csv(exp / "results.csv")
    assert results["model"].tolist() == ["MP-2", "baseline-8", "Progressive-1", "MP-2-dim"]
    assert results[["CCC_arousal_mean", "CCC_valence_mean", "CCC_dominance_mean"]].notna().sum().tolist() == [1, 1, 1]
    asr = pd.read_csv(exp / "asr_results.csv")
    assert set(asr["split"]) == {"dev", "test", "test:loso"}
    assert "x real time" in proc.stdout  # stage 4 throughput
    text = (exp / "RESULTS.md").read_text()
    for needle in ("## Environment", "git_commit", "Most frequent class", "p (Wilcoxon)", "## Configurations",
                   "## Dimensional emotion", "| Mean predictor | 0.000 ± 0.000"):
        assert needle in text


def test_results_agree_with_sklearn_on_the_predictions(ctc_exp):
    exp, _ = ctc_exp
    results = pd.read_csv(exp / "results.csv").set_index("model")
    rows = []
    for fold in sorted(os.listdir(exp / "ser" / "MP-2")):
        if (exp / "ser" / "MP-2" / fold).is_dir():
            p = pd.read_csv(exp / "ser" / "MP-2" / fold / "run0" / "predictions.csv")
            rows.append((balanced_accuracy_score(p["true"], p["predicted"]), accuracy_score(p["true"], p["predicted"]),
                         f1_score(p["true"], p["predicted"], average="macro",
                                  labels=sorted(set(pd.read_csv(exp / "data/emotion/lakomkin2018/manifest.csv")["emotion"])),
                                  zero_division=0)))
    ua, wa, f1 = np.array(rows).T
    assert results.loc["MP-2", "UA_mean"] == pytest.approx(ua.mean(), abs=1e-4)
    assert results.loc["MP-2", "WA_mean"] == pytest.approx(wa.mean(), abs=1e-4)
    assert results.loc["MP-2", "F1_mean"] == pytest.approx(f1.mean(), abs=1e-4)


def test_rerun_skips_finished_work(ctc_exp, tiny_demo):
    exp, _ = ctc_exp
    before = os.path.getmtime(exp / "ser" / "MP-2" / "session1" / "run0" / "predictions.csv")
    proc = run_recipe("ctc_transfer", exp, tiny_demo, CTC_TINY + ["--stage", "2", "--stop-stage", "5"])
    assert "already finished" in proc.stderr
    assert os.path.getmtime(exp / "ser" / "MP-2" / "session1" / "run0" / "predictions.csv") == before
    # every saved model's scores on the two evaluation corpora are reused too (test_cross_corpus)
    assert "16 model x corpus scorings on evaluation corpora (16 finished before, not repeated)" in proc.stderr


@starts("stage2_reruns")
def _start_stage2_reruns(bg, session):
    """A copy of the tiny ctc experiment's stage 2 rerun with a beam decoder added, then with a larger GRU."""
    import shutil

    demo, ctc, exp = bg.start("tiny_demo"), bg.start("ctc_exp"), bg.tmp.mktemp("stage2_reruns") / "exp"

    def build():
        shutil.copytree(ctc.result()[0], exp)  # the shared experiment stays as stage 5 used it
        save = exp / "asr" / "save"
        checkpoints = sorted(os.listdir(save))
        beam = [o.replace("asr.decoders=[greedy]", "asr.decoders=[greedy, beam]") for o in CTC_TINY]
        rescored = run_recipe("ctc_transfer", exp, demo.result(), beam + ["--stage", "2", "--stop-stage", "2"])
        after_rescoring = sorted(os.listdir(save)), pd.read_csv(exp / "asr_results.csv")
        retrained = run_recipe("ctc_transfer", exp, demo.result(),
                               beam + ["asr.rnn_hidden=12", "--stage", "2", "--stop-stage", "2"])
        return checkpoints, rescored, after_rescoring, retrained, sorted(os.listdir(save))

    return bg.run(build)


stage2_reruns = started("stage2_reruns")


def test_stage2_rescores_on_an_evaluation_change_and_retrains_on_a_training_change(stage2_reruns):
    checkpoints, rescored, (kept, asr), retrained, replaced = stage2_reruns.result()
    assert "the older run in" not in rescored.stderr and kept == checkpoints
    assert set(asr.loc[asr["decoder"] == "beam", "split"]) == {"dev", "test"}
    assert "the older run in" in retrained.stderr and replaced != checkpoints


@pytest.mark.parametrize("variant", ["MP-2", "Progressive-1"])
def test_inference_equals_stage5_predictions(ctc_exp, variant):
    exp, _ = ctc_exp
    fold = "session1"
    stage5 = pd.read_csv(exp / "ser" / variant / fold / "run0" / "predictions.csv", keep_default_na=False)
    manifest = pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv", keep_default_na=False)
    wav_of = dict(zip(manifest["ID"], manifest["wav"]))
    rec = EmotionRecognizer.from_experiment(str(exp), variant, fold=fold)
    rows = rec.predict_files([wav_of[i] for i in stage5["ID"]], batch_size=3)
    got = pd.DataFrame(rows)
    assert (got["status"] == "ok").all()
    for c in rec.classes:
        np.testing.assert_allclose(got[f"p_{c}"].astype(float), stage5[f"p_{c}"], atol=1e-4)
    assert got["emotion"].tolist() == stage5["predicted"].tolist()
    assert got["transcript"].map(lambda t: set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")).all()


def test_inference_on_bad_files_long_files_and_48k_stereo(ctc_exp, tmp_path, capsys):
    exp, _ = ctc_exp
    manifest = pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv", keep_default_na=False)
    good = manifest["wav"].iloc[0]
    data, sr = sf.read(good)
    stereo = tmp_path / "stereo48k.wav"
    up = np.interp(np.arange(len(data) * 3) / 3, np.arange(len(data)), data)
    sf.write(stereo, np.stack([up, up], axis=1), 48000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("not audio")
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([data] * 4), sr)
    rec = EmotionRecognizer.from_experiment(str(exp), "MP-2", max_seconds=2 * len(data) / sr)
    rows = {os.path.basename(r["file"]): r for r in rec.predict_files(
        [good, str(stereo), str(tmp_path / "missing.wav"), str(tmp_path / "empty.wav"), str(tmp_path / "notes.wav"),
         str(long)], batch_size=2)}
    assert rows["missing.wav"]["status"] == "error" and "no such audio file" in rows["missing.wav"]["error"]
    assert rows["empty.wav"]["status"] == "error" and "empty.wav" in rows["empty.wav"]["error"]
    assert rows["notes.wav"]["status"] == "error" and "not a readable audio file" in rows["notes.wav"]["error"]
    g, s = rows[os.path.basename(good)], rows["stereo48k.wav"]
    assert g["status"] == s["status"] == "ok" and s["duration"] == pytest.approx(g["duration"], abs=0.01)
    for c in rec.classes:  # the resampled 48 kHz stereo copy is heard like the original
        assert s[f"p_{c}"] == pytest.approx(g[f"p_{c}"], abs=0.05)
    assert rows["long.wav"]["windows"] == 2 and rows["long.wav"]["status"] == "ok"
    refusing = EmotionRecognizer.from_experiment(str(exp), "MP-2", max_seconds=1.0, long="refuse")
    refused = refusing.predict_files([str(long)])[0]
    assert refused["status"] == "error" and "longer than the model's limit" in refused["error"]
    # The command line: a CSV, and an exit code that says some files failed.
    out = tmp_path / "out.csv"
    code = infer_main([str(exp), good, str(tmp_path / "missing.wav"), "--out", str(out), "--variant", "MP-2"])
    assert code == 1 and len(pd.read_csv(out)) == 2
    assert "real-time factor" in capsys.readouterr().err
    assert infer_main([str(exp), good, "--out", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())[0]["status"] == "ok"


def test_las_recipe_adapts_per_fold_and_trains_iaan(las_exp):
    exp, proc = las_exp
    for variant in ("finetuned", "structured"):
        for fold in ("session1", "session2"):
            assert (exp / "adapt" / variant / fold / "model.pt").is_file()
            info = json.loads((exp / "adapt" / variant / fold / "model.json").read_text())
            assert info["fold"] == fold and (info["rank"] == 4) == (variant == "structured")
            train = pd.read_csv(exp / "adapt" / "data" / fold / "train.csv")
            test = pd.read_csv(exp / "adapt" / "data" / fold / "test.csv")
            assert set(train["speaker"]).isdisjoint(test["speaker"])  # test speakers never adapt the ASR
    asr = pd.read_csv(exp / "asr_results.csv")
    stages = set(asr.loc[asr["corpus"] == "iemocap", "stage"])
    assert {"pretrained", "finetuned:encoder", "finetuned:encoder+decoder", "finetuned", "structured"} <= stages
    stores = json.loads((exp / "dump" / "stores_standard.json").read_text())
    assert {"pretrained", "finetuned/session1", "structured/session2"} <= set(stores["asr"])
    results = pd.read_csv(exp / "results.csv")
    assert results["model"].tolist() == ["IAAN-pretrained-pblstm1", "IAAN-structured-pblstm2"]
    assert "ASR adaptation and SER" in (exp / "RESULTS.md").read_text()


def test_iaan_inference_reads_the_dialog_context(las_exp, tiny_demo):
    exp, _ = las_exp
    variant, fold = "IAAN-pretrained-pblstm1", "session1"
    stage5 = pd.read_csv(exp / "ser" / variant / fold / "run0" / "predictions.csv", keep_default_na=False)
    manifest = pd.read_csv(exp / "data" / "emotion" / "standard" / "manifest.csv", keep_default_na=False)
    files = [dict(zip(manifest["ID"], manifest["wav"]))[i] for i in stage5["ID"]]
    with_context = pd.DataFrame(EmotionRecognizer.from_experiment(str(exp), variant, fold=fold,
                                                                  context=tiny_demo["iemocap"]).predict_files(files))
    without = pd.DataFrame(EmotionRecognizer.from_experiment(str(exp), variant, fold=fold).predict_files(files))
    probs = [c for c in stage5.columns if c.startswith("p_")]
    # With the IEMOCAP folder's dialogs, inference hears what stage 5 heard: the same probabilities.
    np.testing.assert_allclose(with_context[probs].astype(float), stage5[probs], atol=1e-4)
    assert (without["context"] == "zero (no --context given)").all()
    assert np.abs(without[probs].to_numpy(float) - stage5[probs].to_numpy(float)).max() > 1e-3  # context matters


def test_inference_joint_decoding_needs_a_las_with_a_ctc_head(ctc_exp, las_exp):
    from ser_modules.utils.fileio import ManifestError

    ctc, _ = ctc_exp
    with pytest.raises(ManifestError, match="--decoder joint needs a LAS with a CTC head; this DeepSpeech2"):
        EmotionRecognizer.from_experiment(str(ctc), "MP-2", decoder="joint")
    las, _ = las_exp
    manifest = pd.read_csv(las / "data" / "emotion" / "standard" / "manifest.csv", keep_default_na=False)
    rows = EmotionRecognizer.from_experiment(str(las), "IAAN-pretrained-pblstm1", decoder="joint").predict_files(
        manifest["wav"].iloc[:2].tolist())
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(isinstance(r["transcript"], str) for r in rows)


def test_compare_results(ctc_exp, las_exp, tmp_path):
    sys.path.insert(0, os.path.join(REPO, "utils"))
    from compare_results import compare, main as compare_main

    md, csv = compare([str(ctc_exp[0]), str(las_exp[0])])
    assert md["model"].tolist()[:4] == ["MP-2", "baseline-8", "Progressive-1", "MP-2-dim"] and len(md) == 6
    ua_cols = [c for c in csv.columns if c.endswith(" UA")]
    assert len(ua_cols) == 2
    for col in ua_cols:
        values = [v for v in csv[col] if v]
        top = max(float(v.rstrip("*")) for v in values)
        starred = [float(v.rstrip("*")) for v in values if v.endswith("*")]
        assert starred and all(v == top for v in starred), (col, values)  # only the column's best is marked
        assert len(starred) < len(values) or len(set(values)) == 1
    assert compare_main([str(ctc_exp[0]), str(las_exp[0]), "--out", str(tmp_path / "cmp")]) == 0
    assert "**" in (tmp_path / "cmp.md").read_text()
    assert compare_main([str(tmp_path)]) == 2  # not an experiment folder


def test_compare_results_puts_an_asr_and_an_upstream_experiment_in_one_table(ctc_exp, upstream_exp):
    sys.path.insert(0, os.path.join(REPO, "utils"))
    from compare_results import compare

    md, csv = compare([str(ctc_exp[0]), str(upstream_exp[0])])
    ds2, upstream = (pd.read_csv(e[0] / "results.csv")["model"].tolist() for e in (ctc_exp, upstream_exp))
    assert md["model"].tolist() == ds2 + upstream  # one row per model of either experiment
    ua = [c for c in csv.columns if c.endswith(" UA")]
    assert len(ua) == 2
    for col, models in zip(ua, (ds2, upstream)):  # each experiment's column is filled for its own models only
        filled = csv.loc[csv[col] != "", "model"].tolist()
        assert filled == models
