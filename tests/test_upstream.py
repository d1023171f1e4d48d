"""Pretrained upstreams (recipes/upstream_probe): tiny random transformers and SpeechBrain models built
from configs (utils/make_tiny_upstream.py), their stored layers against the models' own forward,
the weighted layer sum, bad folders, and the recipe end to end on the tiny demo corpus (the
``upstream_exp`` fixture of conftest.py, shared with test_pipeline.py's comparison test)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from background import started, starts
from ser_modules.dump.writing import dump_asr_layers
from ser_modules.models.ser import FineTuneMP, FrozenASRLayer, WeightedLayerSum
from ser_modules.ser.probe import expand_variants, resolve_reference
from ser_modules.upstreams.formats import upstream_kind
from ser_modules.upstreams.loading import load_upstream
from ser_modules.utils.fileio import ManifestError, write_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "utils"))
from make_tiny_upstream import make_tiny_upstream  # noqa: E402

DURATIONS = (1.0, 0.55, 0.8, 0.3)  # one padded batch of different lengths


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    """Four noise-and-tone clips of different lengths and their manifest."""
    folder = tmp_path_factory.mktemp("upstream_wavs")
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate(DURATIONS):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        path = str(folder / f"u{i}.wav")
        sf.write(path, wav, 16000, subtype="FLOAT")
        rows.append({"ID": f"u{i}", "wav": path, "duration": seconds})
    frame = pd.DataFrame(rows)
    write_csv(str(folder / "utts.csv"), frame)
    return frame, str(folder / "utts.csv")


def dump(model, features, utterances, root):
    frame, csv = utterances
    return dump_asr_layers(model, features, frame, csv, model.layer_names, str(root), "up", "sha", "cpu",
                           batch_size=4, dtype="float32")


def conv_frames(samples: int, kernels, strides) -> int:
    for k, s in zip(kernels, strides):
        samples = (samples - k) // s + 1
    return samples


# Layer-normalised feature encoders (the wav2vec2-large-lv60 style) take the attention mask: padded
# batches; the wav2vec2-base style (group norm, no mask) and data2vec-audio run one utterance at a time.
@pytest.mark.parametrize("kind,group_norm", [("wav2vec2", False), ("hubert", False), ("wavlm", False),
                                             ("wav2vec2", True), ("data2vec-audio", False)])
def test_dumped_layers_equal_the_models_hidden_states(kind, group_norm, utterances, tmp_path):
    import transformers

    folder = make_tiny_upstream(kind, str(tmp_path / kind), layers=2, hidden=32, group_norm=group_norm)
    model, features = load_upstream(folder)
    assert model.layer_names == ["layer0", "layer1", "layer2"]
    assert model.batched == (kind != "data2vec-audio" and not group_norm)
    store = dump(model, features, utterances, tmp_path / "dump")
    reference = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    cfg = reference.config
    for row in utterances[0].itertuples():
        wav = torch.from_numpy(sf.read(row.wav, dtype="float32")[0])
        with torch.no_grad():
            states = reference(wav[None], output_hidden_states=True).hidden_states  # the utterance alone
        expected_frames = conv_frames(len(wav), cfg.conv_kernel, cfg.conv_stride)
        assert abs(expected_frames - row.duration * 50) <= 1  # 50 frames per second
        for k, layer in enumerate(model.layer_names):
            got = store.get(row.ID, layer)
            assert got.shape == (expected_frames, 32)
            np.testing.assert_allclose(got, states[k][0].numpy(), atol=2e-5, err_msg=f"{kind} {layer} {row.ID}")


def test_whisper_encoder_layers_are_cropped_from_its_30_second_window(utterances, tmp_path):
    import transformers

    folder = make_tiny_upstream("whisper", str(tmp_path / "whisper"), layers=2, hidden=32)
    model, features = load_upstream(folder)
    store = dump(model, features, utterances, tmp_path / "dump")
    encoder = transformers.WhisperModel.from_pretrained(folder, local_files_only=True).get_encoder().eval()
    mel = transformers.WhisperFeatureExtractor(feature_size=80)
    for row in utterances[0].itertuples():
        wav = sf.read(row.wav, dtype="float32")[0]
        frames = -(-len(wav) // 320)  # 20 ms per encoder frame, a partial last one counts
        with torch.no_grad():
            states = encoder(mel(wav, sampling_rate=16000, return_tensors="pt").input_features,
                             output_hidden_states=True).hidden_states
        assert states[0].shape[1] == 1500  # the whole 30 s window
        for k, layer in enumerate(model.layer_names):
            np.testing.assert_allclose(store.get(row.ID, layer), states[k][0, :frames].numpy(), atol=2e-5)


def test_group_norm_models_would_change_with_padding(tmp_path):
    """Why the wav2vec2-base style runs unbatched: its group norm sees the padding."""
    folder = make_tiny_upstream("wav2vec2", str(tmp_path / "w2v"), group_norm=True)
    model, _ = load_upstream(folder)
    wav = torch.randn(8000) * 0.1
    alone = model.model(wav[None], output_hidden_states=True).hidden_states[2][0]
    padded = model.model(torch.cat([wav, torch.zeros(8000)])[None], output_hidden_states=True).hidden_states[2][0]
    assert (alone - padded[: len(alone)]).abs().max() > 1e-3
    exact = model.forward_layers(torch.stack([torch.cat([wav, torch.zeros(8000)])] * 2), torch.tensor([8000, 16000]),
                                 ["layer2"])["layer2"]
    assert int(exact[1][0]) == len(alone)
    torch.testing.assert_close(exact[0][0, : len(alone)], alone, atol=1e-5, rtol=0)


def test_speechbrain_folder_layers_and_frame_rate(utterances, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    folder = make_tiny_upstream("speechbrain", str(tmp_path / "sb"), layers=2, hidden=16)
    model, features = load_upstream(folder)
    assert upstream_kind(folder) == "speechbrain"
    assert model.layer_names == [f"layer{k}" for k in range(5)]  # features + (linear, relu) x 2
    assert model.layer_sizes == {"layer0": 20, "layer1": 16, "layer2": 16, "layer3": 16, "layer4": 16}
    store = dump(model, features, utterances, tmp_path / "dump")
    with open(os.path.join(folder, "hyperparams.yaml")) as f:
        hp = load_hyperpyyaml(f)
    hp["encoder"].load_state_dict(torch.load(os.path.join(folder, "encoder.ckpt")))
    for row in utterances[0].itertuples():
        wav = torch.from_numpy(sf.read(row.wav, dtype="float32")[0])[None]
        with torch.no_grad():
            expected = hp["encoder"](hp["compute_features"](wav))[0].numpy()
        assert abs(store.frames(row.ID, "layer4") - row.duration * 100) <= 2  # 10 ms Fbank frames
        np.testing.assert_allclose(store.get(row.ID, "layer4"), expected, atol=1e-5)


def test_weighted_sum_weights_sum_to_one_and_learn_while_the_upstream_stays_frozen(tmp_path):
    folder = make_tiny_upstream("wavlm", str(tmp_path / "wavlm"))
    upstream, _ = load_upstream(folder)
    frozen = FrozenASRLayer(upstream, upstream.layer_names)  # all layers side by side
    model = WeightedLayerSum(len(upstream.layer_names), 32, FineTuneMP(32, n_classes=4, dropout=0.0))
    before = {k: v.clone() for k, v in upstream.state_dict().items()}
    optimizer = torch.optim.Adam([*model.parameters(), *upstream.parameters()], lr=0.1)
    wavs, samples = torch.randn(2, 12000) * 0.1, torch.tensor([12000, 9000])
    for _ in range(3):
        frozen.train()
        x, frames = frozen(wavs, samples)
        assert x.shape[-1] == 3 * 32
        loss = torch.nn.functional.cross_entropy(model(x, frames), torch.tensor([0, 2]))
        optimizer.zero_grad()
        loss.backward()
        assert model.layer_logits.grad is not None and model.layer_logits.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in upstream.parameters())
        optimizer.step()
    weights = model.layer_weights()
    weights = weights.detach()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6) and (weights > 0).all()
    assert not torch.allclose(weights, torch.full_like(weights, 1 / 3))  # the weights moved from uniform
    assert all(torch.equal(before[k], v) for k, v in upstream.state_dict().items())  # upstream unchanged
    assert not upstream.model.training  # dropout and masking stay off


@pytest.mark.slow
def test_bad_folders_get_one_line_naming_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "wavlm"}))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    sb = make_tiny_upstream("speechbrain", str(tmp_path / "sb"))
    os.remove(os.path.join(sb, "encoder.ckpt"))
    cases = {"missing": "upstream folder or checkpoint file not found", "empty": "no config.json (Hugging Face transformers) and no "
             "hyperparams.yaml (SpeechBrain)", "noweights": "has config.json but no weights (model.safetensors or "
             "pytorch_model.bin)", "bert": "model_type 'bert' is not a supported upstream", "sb": "no checkpoint "
             "encoder.ckpt"}
    for name, message in cases.items():
        with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_upstream(str(tmp_path / name))
    proc = subprocess.run([sys.executable, "-m", "ser_modules.upstreams", "check", "--upstream", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(tmp_path / "empty") in proc.stderr
    runner = subprocess.run(["bash", os.path.join(REPO, "recipes", "upstream_probe", "run.sh"), "--exp-dir",
                             str(tmp_path / "exp"), "--upstream", str(tmp_path / "noweights")],
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert runner.returncode == 2 and runner.stderr.strip() == f"error: {tmp_path / 'noweights'}: {cases['noweights']}"
    assert not (tmp_path / "exp" / "data").exists()  # stopped before stage 1


def test_upstream_names_are_unique_and_never_a_reserved_name():
    from ser_modules.upstreams.formats import upstream_name

    taken = set()
    names = []
    for path in ("/m/wavlm-base-plus", "/n/wavlm-base-plus/", "/m/pretrained", "/m/a b"):
        names.append(upstream_name(path, taken))
        taken.add(names[-1])
    assert names == ["wavlm-base-plus", "wavlm-base-plus-2", "pretrained-2", "a-b"]


def test_templates_expand_over_upstreams_and_layers():
    ups = [{"name": "wavlm", "layers": ["layer0", "layer1", "layer2"]}, {"name": "hubert", "layers": ["layer0", "layer1"]}]
    variants = expand_variants([{"name": "weighted-MP", "type": "weighted", "head": "mp", "asr": "upstreams"},
                                {"name": "RNN", "type": "rnn", "asr": "upstreams", "layer": "all", "hidden": 8},
                                {"name": "IAAN", "type": "iaan", "asr": "upstreams", "layer": "last"},
                                {"name": "baseline", "type": "baseline"}], ups)
    names = [v["name"] for v in variants]
    assert names == ["weighted-MP-wavlm", "weighted-MP-hubert", "RNN-wavlm.layer0", "RNN-wavlm.layer1",
                     "RNN-wavlm.layer2", "RNN-hubert.layer0", "RNN-hubert.layer1", "IAAN-wavlm.layer2",
                     "IAAN-hubert.layer1", "baseline"]
    assert variants[0]["layers"] == ups[0]["layers"] and variants[0]["layer"] == "weighted"
    assert resolve_reference("weighted-MP", names) == "weighted-MP-wavlm"
    sb = {"name": "sb", "layers": ["layer0", "layer1", "layer2"], "dims": {"layer0": 20, "layer1": 16, "layer2": 16}}
    weighted = {"name": "w", "type": "weighted", "asr": "upstreams"}
    assert expand_variants([weighted], [sb])[0]["layers"] == ["layer1", "layer2"]  # the narrower features left out
    with pytest.raises(ManifestError, match="one dimension"):
        expand_variants([{**weighted, "layers": ["layer0", "layer1"]}], [sb])
    with pytest.raises(ManifestError, match="layer7"):
        expand_variants([{"name": "MP", "type": "mp", "asr": "upstreams", "layer": "layer7"}], ups)


def test_upstream_recipe_end_to_end(upstream_exp):
    exp, proc = upstream_exp
    described = json.loads((exp / "asr" / "upstreams.json").read_text())["upstreams"]
    assert [u["name"] for u in described] == ["wavlm-tiny"]
    assert described[0]["layers"] == ["layer0", "layer1", "layer2"] and described[0]["frame_rate_hz"] == 50
    stores = json.loads((exp / "dump" / "stores_standard.json").read_text())
    assert stores["asr"]["wavlm-tiny"]["layers"] == ["layer0", "layer1", "layer2"]
    results = pd.read_csv(exp / "results.csv")
    assert results["model"].tolist() == ["weighted-MP-wavlm-tiny", "MP-wavlm-tiny.layer0", "MP-wavlm-tiny.layer1",
                                         "MP-wavlm-tiny.layer2", "RNN-wavlm-tiny.layer2", "IAAN-wavlm-tiny.layer1",
                                         "eGeMAPS-SVM", "weighted-MP-top1-wavlm-tiny"]
    for fold in ("session1", "session2"):
        weights = json.loads((exp / "ser" / "weighted-MP-wavlm-tiny" / fold / "run0" / "layer_weights.json").read_text())
        assert list(weights) == ["layer0", "layer1", "layer2"] and sum(weights.values()) == pytest.approx(1, abs=1e-4)
        # stored layer0..1 and the fine-tuned block's layer2
        weights = json.loads((exp / "ser" / "weighted-MP-top1-wavlm-tiny" / fold / "run0" / "layer_weights.json").read_text())
        assert list(weights) == ["layer0", "layer1", "layer2"] and sum(weights.values()) == pytest.approx(1, abs=1e-4)
    text = (exp / "RESULTS.md").read_text()
    for needle in ("## Upstreams (stage 2)", "## Learned layer weights", "Weighted layer sum (SUPERB)",
                   "against **weighted-MP-wavlm-tiny**", "Classical reference", "entropy / uniform"):
        assert needle in text
    for plot in ("ua_per_layer_wavlm-tiny.png", "layer_weights_wavlm-tiny.png"):
        assert (exp / "plots" / plot).is_file()
    assert "stage 3: no adaptation (ctc_head: False)" in proc.stderr


@pytest.mark.parametrize("variant", ["weighted-MP-wavlm-tiny", "RNN-wavlm-tiny.layer2",
                                     "weighted-MP-top1-wavlm-tiny"])
def test_inference_on_an_upstream_experiment_equals_stage5(upstream_exp, variant):
    from ser_modules.inference.recognizer import EmotionRecognizer

    exp, _ = upstream_exp
    stage5 = pd.read_csv(exp / "ser" / variant / "session1" / "run0" / "predictions.csv", keep_default_na=False)
    manifest = pd.read_csv(exp / "data" / "emotion" / "standard" / "manifest.csv", keep_default_na=False)
    wav_of = dict(zip(manifest["ID"], manifest["wav"]))
    rec = EmotionRecognizer.from_experiment(str(exp), variant, fold="session1")
    got = pd.DataFrame(rec.predict_files([wav_of[i] for i in stage5["ID"]], batch_size=3))
    assert (got["status"] == "ok").all() and (got["transcript"] == "").all()  # an upstream has no vocabulary
    for c in rec.classes:
        np.testing.assert_allclose(got[f"p_{c}"].astype(float), stage5[f"p_{c}"], atol=1e-4)


def test_inference_names_a_moved_upstream_folder(upstream_exp, tmp_path, capsys):
    from ser_modules.infer import main as infer_main

    exp, _ = upstream_exp
    info = json.loads((exp / "asr" / "wavlm-tiny" / "model.json").read_text())
    moved = tmp_path / "exp"
    import shutil

    shutil.copytree(exp, moved, ignore=shutil.ignore_patterns("dump"))  # the copy's upstream points elsewhere
    (moved / "asr" / "wavlm-tiny" / "model.json").write_text(json.dumps({**info, "upstream": {
        **info["upstream"], "source": str(tmp_path / "gone")}}))
    assert infer_main([str(moved), str(tmp_path / "a.wav"), "--variant", "weighted-MP-wavlm-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the upstream it was made with is gone" in err and str(tmp_path / "gone") in err


def ctc_hparams(features, out_dir, epochs):
    from ser_modules.data.text import CharVocabulary

    return {"vocab": CharVocabulary(specials=["<blank>"]), "features": features, "seed": 1, "lr": 2e-3,
            "epochs_per_stage": epochs, "patience": epochs, "select_on": "CER", "stages": ["all"],
            "opt_class": lambda params: torch.optim.Adam(params, lr=2e-3), "batch_size": 4, "sortagrad_epochs": 0,
            "num_workers": 0, "max_grad_norm": 5.0, "output_folder": str(out_dir)}


def test_ctc_adaptation_keeps_the_feature_encoder_and_lowers_the_ctc_loss(utterances, tmp_path):
    from ser_modules.asr.adaptation import run_stage
    from ser_modules.asr.brains import CTCBrain
    from ser_modules.asr.training import run_options
    from ser_modules.upstreams.ctc import CTCUpstream

    frame, _ = utterances
    texts = ["A CAT", "HI", "NO DOG", "A"]
    data = frame.assign(transcript=texts, speaker="s1", corpus="tiny", seg_start="", seg_end="")
    csv = str(tmp_path / "train.csv")
    write_csv(csv, data)
    upstream, features = load_upstream(make_tiny_upstream("wavlm", str(tmp_path / "wavlm")))
    torch.manual_seed(0)
    model = CTCUpstream(upstream, 29)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = ctc_hparams(features, tmp_path, epochs=4)
    record = run_stage(model, hp, "all", 1.0, {"train": csv, "valid": csv}, str(tmp_path / "stage"),
                       run_options("cpu", noprogressbar=True), CTCBrain)
    after = model.state_dict()
    encoder = [k for k in after if k.startswith("upstream.model.feature_extractor.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # frozen: bit-identical
    assert not any(p.requires_grad for p in model.feature_encoder().parameters())
    changed = {k.split(".")[4] if k.startswith("upstream.model.encoder.layers.") else k.split(".")[0]
               for k in after if not torch.equal(before[k], after[k])}
    assert {"0", "1", "head"} <= changed  # both transformer layers and the CTC head moved
    losses = [float(line.split("train loss: ")[1].split(" ")[0].rstrip(","))
              for line in (tmp_path / "stage" / "train_log.txt").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.9, losses
    assert not record["kept_start"] and record["valid"] <= record["start"]


@starts("ctc_head_exp")
def _start_ctc_head_exp(bg, session):
    """A copy of the tiny upstream_probe experiment with stages 3-6 rerun to adapt the upstream with a CTC
    head, then stage 3 again (in the background, tests/background.py)."""
    import shutil

    demo, upstream, copy = bg.start("tiny_demo"), bg.start("upstream_exp"), bg.tmp.mktemp("ctc_head") / "exp"

    def build():
        shutil.copytree(upstream.result()[0], copy)
        env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        cmd = ["bash", os.path.join(REPO, "recipes", "upstream_probe", "run.sh"), "--exp-dir", str(copy), "--size",
               "demo", "--emotion-corpus", "iemocap", "--emotion-root", demo.result()["iemocap"], "--nj", "1",
               "--folds", "loso", "--stage", "3", "--stop-stage", "6", "score.chance_runs=2", "adapt.ctc_head=True",
               "adapt.epochs_per_stage=1", "dump.dtype=float32",
               "ser.variants=[{name: MP, type: mp, asr: adapted, layer: last, max_epochs: 1}]"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        again = subprocess.run(cmd[:-4] + ["--stop-stage", "3", *cmd[-4:]], env=env, capture_output=True, text=True,
                               timeout=600) if proc.returncode == 0 else None
        return copy, proc, again

    return bg.run(build)


ctc_head_exp = started("ctc_head_exp")


def test_ctc_head_recipe_exports_scores_and_dumps_adapted_upstreams(ctc_head_exp):
    copy, proc, again = ctc_head_exp.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for fold in ("session1", "session2"):
        info = json.loads((copy / "adapt" / "adapted" / fold / "model.json").read_text())
        assert info["upstream"]["name"] == "wavlm-tiny" and info["ctc_head"]["vocab"][0] == "<blank>"
        assert (copy / "ser" / "MP-adapted.layer2" / fold / "run0" / "predictions.csv").is_file()
    asr = pd.read_csv(copy / "asr_results.csv", keep_default_na=False)
    row = asr[asr["stage"] == "adapted"]
    assert len(row) == 1 and row["model"].iloc[0] == "wavlm-tiny" and float(row["WER"].iloc[0]) >= 0
    stores = json.loads((copy / "dump" / "stores_standard.json").read_text())["asr"]
    assert {"adapted/session1", "adapted/session2", "wavlm-tiny"} <= set(stores)
    assert stores["adapted/session1"]["layers"] == ["layer0", "layer1", "layer2"]
    assert pd.read_csv(copy / "results.csv")["model"].tolist() == ["MP-adapted.layer2"]
    assert "| wavlm-tiny | adapted |" in (copy / "RESULTS.md").read_text()
    # Finished folds are skipped on rerun.
    assert again.returncode == 0 and "adapted session1 done (0.0 s)" in again.stderr, again.stderr[-3000:]


@pytest.mark.slow
def test_the_rest_of_the_toolkit_does_not_import_transformers():
    code = ("import sys, ser_modules.stages.dump, ser_modules.stages.ser_train, ser_modules.stages.score, "
            "ser_modules.stages.upstream_describe, ser_modules.infer, ser_modules.upstreams.loading, ser_modules.ser.probe; "
            "print('transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
