"""Exported model folders (ser_modules.export): self-contained, integrity-checked, loadable through
EmotionRecognizer.from_pretrained, the infer CLI and SpeechBrain's foreign_class."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from ser_modules.inference.export import MANIFEST, export_hparams, export_variant, verify_export
from ser_modules.inference.hub_interface import fold_key
from ser_modules.inference.recognizer import EmotionRecognizer
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBS = """
import json, sys
from ser_modules.infer import EmotionRecognizer
args = json.loads(sys.argv[1])
rec = EmotionRecognizer.from_pretrained(args["folder"], device="cpu", context=args["context"])
rows = rec.predict_files(args["files"])
print(json.dumps([[r["p_" + c] for c in rec.classes] for r in rows]))
"""


def probabilities(rec, files):
    return np.array([[r[f"p_{c}"] for c in rec.classes] for r in rec.predict_files(files)])


def files_of(exp, protocol, n=6):
    manifest = pd.read_csv(exp / "data" / "emotion" / protocol / "manifest.csv", keep_default_na=False)
    return manifest["wav"].tolist()[:n]


@pytest.mark.parametrize("which,variant,protocol", [("ctc", "MP-2", "lakomkin2018"), ("ctc", "baseline-8", "lakomkin2018"),
                                                    ("las", "IAAN-structured-pblstm2", "standard")])
def test_export_loads_in_a_fresh_process_without_the_experiment(request, tmp_path, tiny_demo, which, variant, protocol):
    exp = tmp_path / "exp"
    shutil.copytree(request.getfixturevalue(f"{which}_exp")[0], exp)
    files = files_of(exp, protocol)
    context = tiny_demo["iemocap"] if variant.startswith("IAAN") else None  # IAAN reads the previous turns
    want = probabilities(EmotionRecognizer.from_experiment(str(exp), variant, device="cpu", context=context), files)
    out = tmp_path / "export"
    manifest = export_variant(str(exp), str(out), variant)
    shutil.rmtree(exp)
    assert sorted(manifest["files"]) == sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs if f != MANIFEST)
    assert not any(name.startswith(("dump/pretrained", "data/", "logs/")) for name in manifest["files"])
    proc = subprocess.run([sys.executable, "-c", PROBS, json.dumps({"folder": str(out), "files": files, "context": context})],
                          capture_output=True, text=True, cwd=str(tmp_path), check=True)
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    if which == "las":  # each fold's model reads its own adapted listener: all exported
        folds = {n.split("/")[2] for n in manifest["files"] if n.startswith(f"ser/{variant}/")}
        adapted = {n.split("/")[2] for n in manifest["files"] if n.startswith("adapt/structured/") and n.endswith("model.pt")}
        assert adapted == folds and len(folds) > 1


@pytest.fixture(scope="module")
def ctc_export(ctc_exp, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "MP-2"
    export_variant(str(ctc_exp[0]), str(out), "MP-2")
    return out


def test_foreign_class_and_the_cli_load_the_export(ctc_export, ctc_exp, tmp_path):
    from speechbrain.inference.interfaces import foreign_class

    files = files_of(ctc_exp[0], "lakomkin2018", 2)
    rec = foreign_class(source=str(ctc_export), pymodule_file="custom_interface.py",
                        classname="SpeechEmotionRecognizer", savedir=str(tmp_path / "sb"))
    out = rec.classify_file(files[0])
    want = probabilities(EmotionRecognizer.from_pretrained(str(ctc_export), device="cpu"), files[:1])[0]
    assert out["emotion"] == rec.recognizer.classes[int(np.argmax(want))]
    np.testing.assert_allclose([out["probabilities"][c] for c in rec.recognizer.classes], want, atol=1e-6)
    csv = tmp_path / "rows.csv"
    proc = subprocess.run([sys.executable, "-m", "ser_modules.infer", str(ctc_export), *files, "--out", str(csv),
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    folds = len(export_hparams(str(ctc_export))["folds"])
    assert f"MP-2 ({folds} fold model(s)): 2 file(s) ok" in proc.stderr
    assert len(pd.read_csv(csv)) == 2


def test_foreign_class_copies_into_a_savedir_and_refuses_one_holding_another_export(ctc_export, ctc_exp, tmp_path):
    from speechbrain.inference.interfaces import foreign_class
    from speechbrain.utils.fetching import LocalStrategy

    files = files_of(ctc_exp[0], "lakomkin2018", 1)
    want = probabilities(EmotionRecognizer.from_pretrained(str(ctc_export), device="cpu"), files)[0]
    savedir = tmp_path / "sb"
    rec = foreign_class(source=str(ctc_export), pymodule_file="custom_interface.py", classname="SpeechEmotionRecognizer",
                        savedir=str(savedir), local_strategy=LocalStrategy.COPY)
    assert not any(p.is_symlink() for p in savedir.iterdir()) and (savedir / f"{fold_key('session1')}.ckpt").is_file()
    got = rec.classify_file(files[0])["probabilities"]
    np.testing.assert_allclose([got[c] for c in rec.recognizer.classes], want, atol=1e-6)
    other = tmp_path / "other"  # another export of the same variant: SpeechBrain would reuse the files in savedir
    export_variant(str(ctc_exp[0]), str(other), "MP-2", folds="1")
    with pytest.raises(ManifestError, match=r"its hyperparams.yaml is not the one loaded .*own savedir"):
        foreign_class(source=str(other), pymodule_file="custom_interface.py", classname="SpeechEmotionRecognizer",
                      savedir=str(savedir), local_strategy=LocalStrategy.COPY)


@pytest.mark.parametrize("which,variant", [("ctc", "Progressive-1"), ("upstream", "weighted-MP-wavlm-tiny")])
def test_hyperparams_yaml_wires_the_fold_models_and_their_weights(request, tmp_path, which, variant):
    """HyperPyYAML builds each fold's model (!new:) and SpeechBrain's pretrainer loads its weights."""
    import torch

    exp = request.getfixturevalue(f"{which}_exp")[0]
    out = tmp_path / "export"
    export_variant(str(exp), str(out), variant)
    hparams = export_hparams(str(out))
    assert hparams["folds"] and set(hparams["ser_models"].keys()) == set(hparams["folds"])
    pretrainer = hparams["pretrainer"]
    pretrainer.collect_files(default_source=str(out))
    pretrainer.load_collected()
    assert pretrainer.source == str(out)
    for fold in hparams["folds"]:
        model = hparams["ser_models"][fold]
        assert model is hparams[fold_key(fold)]
        want = torch.load(exp / "ser" / variant / fold / "run0" / "model.pt", map_location="cpu")
        assert type(model).__name__ == {"Progressive-1": "ProgressiveNet", "weighted-MP-wavlm-tiny": "WeightedLayerSum"}[variant]
        assert want.keys() == model.state_dict().keys()
        assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())
    protocol = "lakomkin2018" if which == "ctc" else "standard"
    files = files_of(exp, protocol, 3)
    np.testing.assert_allclose(probabilities(EmotionRecognizer.from_pretrained(str(out), device="cpu"), files),
                               probabilities(EmotionRecognizer.from_experiment(str(exp), variant, device="cpu"), files),
                               atol=1e-6)


def test_an_altered_or_missing_file_is_refused_in_one_line(ctc_export, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(ctc_export, folder)
    fold = sorted(os.listdir(folder / "ser" / "MP-2"))[-1]
    weights = folder / "ser" / "MP-2" / fold / "run0" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"^{weights}: altered since export") as err:
        EmotionRecognizer.from_pretrained(str(folder), device="cpu")
    assert "\n" not in str(err.value)
    (folder / "asr" / "model_hparams.yaml").unlink()
    shutil.copyfile(ctc_export / "ser" / "MP-2" / fold / "run0" / "model.pt", weights)
    with pytest.raises(ManifestError, match=r"model_hparams.yaml: missing from the exported model"):
        verify_export(str(folder))
    proc = subprocess.run([sys.executable, "-m", "ser_modules.infer", str(folder), str(weights)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "missing from the exported" in proc.stderr


def test_the_model_card_holds_the_scores_of_results_csv(ctc_export, ctc_exp):
    card = (ctc_export / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert "speech-emotion-recognition" in header["tags"] and header["metrics"]
    results = pd.read_csv(ctc_exp[0] / "results.csv").set_index("model")
    metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics["unweighted-accuracy"] == pytest.approx(results.loc["MP-2", "UA_mean"], abs=1e-4)
    for model in ("MP-2", "baseline-8"):  # the variant and the reference row beside it
        row = results.loc[model]
        assert f"{row['UA_mean']:.3f} ± {row['UA_std']:.3f}" in card and f"{row['F1_mean']:.3f} ± {row['F1_std']:.3f}" in card
    assert "Intended use and limits" in card and "lakomkin2018/loso" in card


def test_export_refuses_an_incomplete_variant_and_a_used_folder(ctc_exp, ctc_export, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(ctc_exp[0], exp, ignore=shutil.ignore_patterns("dump", "data"))
    results = pd.read_csv(exp / "results.csv")
    results.loc[results["model"] == "MP-2", "complete"] = False
    results.to_csv(exp / "results.csv", index=False)
    with pytest.raises(ManifestError, match="scored on incomplete folds"):
        export_variant(str(exp), str(tmp_path / "out"), "MP-2")
    with pytest.raises(ManifestError, match="exists and is not empty"):
        export_variant(str(ctc_exp[0]), str(ctc_export), "MP-2")


@pytest.mark.parametrize("weights", [True, False], ids=["copied", "referenced"])
def test_an_upstream_model_exports_with_its_upstream_copied_or_referenced(upstream_exp, tmp_path, weights):
    exp = tmp_path / "exp"
    shutil.copytree(upstream_exp[0], exp, ignore=shutil.ignore_patterns("dump"))
    results = pd.read_csv(exp / "results.csv")
    variant = results.loc[results["model"].str.startswith("RNN"), "model"].iloc[0]
    files = files_of(exp, "standard", 4)
    want = probabilities(EmotionRecognizer.from_experiment(str(exp), variant, device="cpu"), files)
    out = tmp_path / "export"
    manifest = export_variant(str(exp), str(out), variant, upstream_weights=weights)
    shutil.rmtree(exp)
    copied = [n for n in manifest["files"] if n.startswith("upstream/")]
    assert bool(copied) == weights and bool(manifest["external"]) != weights
    assert any(n.endswith("config.json") for n in (copied or manifest["external"]))
    proc = subprocess.run([sys.executable, "-c", PROBS, json.dumps({"folder": str(out), "files": files, "context": None})],
                          capture_output=True, text=True, cwd=str(tmp_path), check=True)
    np.testing.assert_allclose(np.array(json.loads(proc.stdout.strip().splitlines()[-1])), want, atol=1e-6)
    if not weights:  # the referenced upstream is checked too
        config = next(p for p in manifest["external"] if p.endswith("config.json"))
        original = open(config).read()
        try:
            with open(config, "a") as f:
                f.write(" ")
            with pytest.raises(ManifestError, match=rf"^{config}: altered since export"):
                verify_export(str(out))
        finally:
            with open(config, "w") as f:
                f.write(original)


def test_a_failed_export_leaves_nothing(ctc_exp, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(ctc_exp[0], exp, ignore=shutil.ignore_patterns("dump", "data"))
    (exp / "asr" / "model_hparams.yaml").unlink()  # what rebuilds the DS2
    with pytest.raises(ManifestError, match=r"model_hparams.yaml: missing; the experiment is incomplete"):
        export_variant(str(exp), str(tmp_path / "out"), "MP-2")
    assert sorted(os.listdir(tmp_path)) == ["exp"]


def test_an_unlisted_file_or_a_deleted_manifest_is_refused(ctc_export, tmp_path):
    # The loader lists the fold folders: an added fold model would join the ensemble unchecked.
    folder = tmp_path / "copy"
    shutil.copytree(ctc_export, folder)
    fold = sorted(os.listdir(folder / "ser" / "MP-2"))[0]
    shutil.copytree(folder / "ser" / "MP-2" / fold, folder / "ser" / "MP-2" / "zz-extra")
    with pytest.raises(ManifestError, match=r"zz-extra/run0/model.(json|pt): not part of the exported model"):
        EmotionRecognizer.from_pretrained(str(folder), device="cpu")
    shutil.rmtree(folder / "ser" / "MP-2" / "zz-extra")
    with pytest.raises(ManifestError, match=r"an export of run 0, not of run 1"):
        EmotionRecognizer.load(str(folder), run=1, device="cpu")
    (folder / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="not an exported model folder"):
        EmotionRecognizer.load(str(folder), device="cpu")
    assert oct(os.stat(ctc_export).st_mode & 0o777) == "0o755"
    assert oct(os.stat(ctc_export / "hyperparams.yaml").st_mode & 0o777) == "0o644"


def test_an_exported_multitask_model_returns_the_attributes_in_their_scale_as_the_experiment(ctc_exp, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(ctc_exp[0], exp)
    variant, attributes = "MP-2-dim", ["arousal", "valence", "dominance"]
    manifest = pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv", keep_default_na=False)
    wav = dict(zip(manifest["ID"], manifest["wav"]))
    # one fold's model on its test utterances answers as stage 5 scored them, in the attributes' original scale
    fold = sorted(f for f in os.listdir(exp / "ser" / variant) if (exp / "ser" / variant / f).is_dir())[0]
    stage5 = pd.read_csv(exp / "ser" / variant / fold / "run0" / "predictions.csv")
    one = EmotionRecognizer.from_experiment(str(exp), variant, fold=fold, device="cpu")
    assert one.attributes == attributes and one.classes == sorted(manifest["emotion"].unique())
    rows = pd.DataFrame(one.predict_files([wav[i] for i in stage5["ID"]]))
    np.testing.assert_allclose(rows[attributes].to_numpy(), stage5[[f"pred_{a}" for a in attributes]].to_numpy(),
                               atol=1e-3)
    assert rows["emotion"].tolist() == stage5["predicted"].tolist()
    # the export (every fold) answers as the experiment
    files = files_of(exp, "lakomkin2018")
    want = pd.DataFrame(EmotionRecognizer.from_experiment(str(exp), variant, device="cpu").predict_files(files))
    export_variant(str(exp), str(tmp_path / "export"), variant)
    shutil.rmtree(exp)
    got = pd.DataFrame(EmotionRecognizer.from_pretrained(str(tmp_path / "export"), device="cpu").predict_files(files))
    columns = attributes + [c for c in want.columns if c.startswith("p_")]
    np.testing.assert_allclose(got[columns].to_numpy(float), want[columns].to_numpy(float), atol=1e-6)
    assert want[attributes].std().min() > 0  # not one constant answer
