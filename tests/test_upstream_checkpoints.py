"""Upstreams as users hold them (ser_modules/upstreams/checkpoints.py): openai-whisper ``.pt`` and torchaudio
pipeline ``.pth`` checkpoints. Tiny random checkpoints written in each format (utils/make_tiny_upstream.py);
their layers against openai-whisper's architecture (re-stated there with its module names), torchaudio's
own model and transformers' model of the same weights; the bundle table against torchaudio.pipelines
(no download); bad checkpoints; the probe recipe end to end with both formats; the reference row's line."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from background import starts
from recipe_runs import run_recipe
from ser_modules.upstreams.checkpoints import bundle_arch, bundle_table, resolve_arch
from ser_modules.upstreams.encoders import TorchaudioUpstream
from ser_modules.upstreams.formats import check_upstream, upstream_name
from ser_modules.upstreams.loading import describe_upstream, load_upstream
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "utils"))
from make_tiny_upstream import OpenAIWhisper, hf_config, make_tiny_upstream  # noqa: E402

SR = 16000


def noise_batch(seconds=(1.5, 0.9), seed=0):
    """A padded batch ``(wavs [B, S], samples [B])`` of noise clips of ``seconds``."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.tensor([int(s * SR) for s in seconds])
    wavs = torch.zeros(len(seconds), int(samples.max()))
    for i, n in enumerate(samples.tolist()):
        wavs[i, :n] = torch.randn(n, generator=g) * 0.1
    return wavs, samples


# ---- openai-whisper -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_pt(tmp_path_factory):
    return make_tiny_upstream("whisper", str(tmp_path_factory.mktemp("whisper") / "tiny.pt"), fmt="openai-whisper")


def test_openai_whisper_layers_equal_openai_whispers_own_encoder(whisper_pt):
    ckpt = torch.load(whisper_pt, weights_only=True)
    assert any(k.startswith("decoder.") for k in ckpt["model_state_dict"])  # decoder keys present, and ignored
    reference = OpenAIWhisper(ckpt["dims"]).eval()
    reference.load_state_dict(ckpt["model_state_dict"])
    model, features = load_upstream(whisper_pt)
    assert model.layer_names == ["layer0", "layer1", "layer2"] and features.win == 400
    wavs, samples = noise_batch()
    out = model.forward_layers(wavs, samples, model.layer_names)
    for i, n in enumerate(samples.tolist()):
        mel = model.mel(wavs[i, :n].numpy(), sampling_rate=SR, return_tensors="pt").input_features  # its 30 s window
        with torch.no_grad():
            states = reference.encoder_states(mel)
        frames = -(-n // 320)
        for k, name in enumerate(model.layer_names):
            hidden, lengths = out[name]
            assert int(lengths[i]) == frames
            torch.testing.assert_close(hidden[i, :frames], states[k][0, :frames], atol=1e-5, rtol=0)
    info = describe_upstream("whisper-tiny", whisper_pt)
    assert (info["kind"], info["model_type"], info["frame_rate_hz"], info["n_layers"]) == ("openai-whisper", "whisper", 50, 2)
    assert upstream_name(whisper_pt, set()) == "whisper-tiny"


def test_fp16_openai_checkpoints_load_in_float32(whisper_pt, tmp_path):
    ckpt = torch.load(whisper_pt, weights_only=True)
    half = {**ckpt, "model_state_dict": {k: v.half() for k, v in ckpt["model_state_dict"].items()}}
    torch.save(half, tmp_path / "base.pt")
    model, _ = load_upstream(str(tmp_path / "base.pt"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # as whisper.load_model on CPU


@pytest.mark.parametrize("change, message", [
    ("drop", "lack 1 key(s): layers.1.fc2.weight"),
    ("extra", "1 unexpected key(s) in the openai-whisper checkpoint (neither its encoder's nor its decoder's): "
              "encoder.blocks.0.attn.key.bias"),
    ("dims", "the checkpoint's dims lack n_audio_head"),
])
def test_a_bad_openai_checkpoint_is_one_line_naming_the_key(whisper_pt, tmp_path, change, message):
    ckpt = torch.load(whisper_pt, weights_only=True)
    state, dims = dict(ckpt["model_state_dict"]), dict(ckpt["dims"])
    if change == "drop":
        del state["encoder.blocks.1.mlp.2.weight"]
    elif change == "extra":
        state["encoder.blocks.0.attn.key.bias"] = torch.zeros(32)
    else:
        del dims["n_audio_head"]
    path = tmp_path / "bad.pt"
    torch.save({"dims": dims, "model_state_dict": state}, path)
    for load in (load_upstream, check_upstream):  # the runner's early check finds it too, loading nothing
        with pytest.raises(ManifestError) as err:
            load(str(path))
        assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: ") and message in str(err.value)


# ---- torchaudio -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, group_norm", [("wav2vec2", False), ("wav2vec2", True), ("hubert", False),
                                              ("wavlm", False), ("wavlm", True)])
def test_torchaudio_layers_equal_torchaudios_own_model_in_padded_batches(kind, group_norm, tmp_path):
    from torchaudio.models import wav2vec2_model, wavlm_model

    path = make_tiny_upstream(kind, str(tmp_path / f"{kind}.pth"), group_norm=group_norm, fmt="torchaudio")
    params_json = str(tmp_path / f"{kind}.json")
    arch = resolve_arch(path, params_json)
    model, features = load_upstream(path, arch=arch)
    assert isinstance(model, TorchaudioUpstream) and model.batched == (not group_norm) and features.win == 165
    reference = (wavlm_model if kind == "wavlm" else wav2vec2_model)(**json.load(open(params_json))).eval()
    reference.load_state_dict(torch.load(path, weights_only=True))
    wavs, samples = noise_batch(seed=1)
    out = model.forward_layers(wavs, samples, model.layer_names)
    for i, n in enumerate(samples.tolist()):
        with torch.no_grad():  # torchaudio's own per-block outputs of the utterance alone
            blocks, _ = reference.extract_features(wavs[i : i + 1, :n])
        frames = blocks[0].shape[1]
        for k, block in enumerate(blocks, start=1):
            hidden, lengths = out[f"layer{k}"]
            assert int(lengths[i]) == frames
            torch.testing.assert_close(hidden[i, :frames], block[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, group_norm", [("wav2vec2", False), ("wav2vec2", True), ("hubert", True), ("wavlm", False)])
def test_torchaudio_layers_equal_transformers_hidden_states_of_the_same_weights(kind, group_norm, tmp_path):
    """transformers' model -> torchaudio (import_huggingface_model) -> .pth: every layer, layer0 (the
    transformer's input) included, equals transformers' hidden_states."""
    import transformers
    from torchaudio.models.wav2vec2.utils import import_huggingface_model
    from torchaudio.models.wav2vec2.utils.import_huggingface import _get_config

    torch.manual_seed(0)
    hf = transformers.AutoModel.from_config(hf_config(kind, 2, 32, group_norm)).eval()
    imported = import_huggingface_model(hf)
    torch.save(imported.state_dict(), tmp_path / "custom.pth")
    params = _get_config(hf.config)
    if kind == "wavlm":
        params.update({"encoder_num_buckets": hf.config.num_buckets, "encoder_max_distance": hf.config.max_bucket_distance})
    (tmp_path / "custom.json").write_text(json.dumps(params))
    model, _ = load_upstream(str(tmp_path / "custom.pth"), arch=resolve_arch(str(tmp_path / "custom.pth"),
                                                                             str(tmp_path / "custom.json")))
    wavs, samples = noise_batch(seed=2)
    out = model.forward_layers(wavs, samples, model.layer_names)
    for i, n in enumerate(samples.tolist()):
        with torch.no_grad():
            states = hf(wavs[i : i + 1, :n], output_hidden_states=True).hidden_states
        for k, name in enumerate(model.layer_names):
            frames = states[k].shape[1]
            torch.testing.assert_close(out[name][0][i, :frames], states[k][0], atol=1e-5, rtol=0)


def test_normalize_waveform_bundles_normalise_each_utterance_over_its_own_samples(tmp_path):
    from torchaudio.models import wav2vec2_model
    from torchaudio.pipelines._wav2vec2.utils import _extend_model

    path = make_tiny_upstream("wav2vec2", str(tmp_path / "large.pth"), fmt="torchaudio")
    params = json.load(open(tmp_path / "large.json"))
    (tmp_path / "large-normalised.json").write_text(json.dumps({"params": params, "normalize_waveform": True}))
    model, _ = load_upstream(path, arch=resolve_arch(path, str(tmp_path / "large-normalised.json")))
    raw = wav2vec2_model(**params).eval()
    raw.load_state_dict(torch.load(path, weights_only=True))
    reference = _extend_model(raw, normalize_waveform=True)  # what bundle.get_model() returns for LV-60k, XLS-R, ...
    wavs, samples = noise_batch(seed=3)
    wavs *= torch.tensor([[5.0], [0.2]])  # different levels: normalisation matters
    out = model.forward_layers(wavs, samples, ["layer1"])["layer1"][0]
    for i, n in enumerate(samples.tolist()):
        with torch.no_grad():
            block1 = reference.extract_features(wavs[i : i + 1, :n])[0][0]
        torch.testing.assert_close(out[i, : block1.shape[1]], block1[0], atol=1e-5, rtol=0)


def test_bundle_table_agrees_with_torchaudio_pipelines():
    import torchaudio.pipelines as pipelines

    table = bundle_table()
    expected = {"wav2vec2_fairseq_base_ls960.pth": "WAV2VEC2_BASE", "hubert_fairseq_base_ls960.pth": "HUBERT_BASE",
                "wavlm_base_plus.pth": "WAVLM_BASE_PLUS", "wavlm_base.pth": "WAVLM_BASE", "wavlm_large.pth": "WAVLM_LARGE",
                "wav2vec2_fairseq_large_lv60k.pth": "WAV2VEC2_LARGE_LV60K", "hubert_fairseq_large_ll60k.pth": "HUBERT_LARGE",
                "wav2vec2_fairseq_base_ls960_asr_ls960.pth": "WAV2VEC2_ASR_BASE_960H"}
    assert {f: table.get(f) for f in expected} == expected
    for file, name in table.items():
        bundle = getattr(pipelines, name)
        arch = bundle_arch(name)
        assert os.path.basename(bundle._path) == file
        assert arch["params"] == {**bundle._params, "aux_num_out": None}  # an ASR bundle's CTC head is not the upstream
        assert arch["normalize_waveform"] == bundle._normalize_waveform
    assert bundle_arch("WAVLM_LARGE")["builder"] == "wavlm" and bundle_arch("WAVLM_LARGE")["normalize_waveform"]
    assert bundle_arch("HUBERT_BASE")["family"] == "hubert" and not bundle_arch("HUBERT_BASE")["normalize_waveform"]


def test_a_bundle_file_is_recognised_by_name_and_equals_the_pipelines_model(tmp_path, monkeypatch):
    """A random HUBERT_BASE-size state dict saved under the bundle's file name: loaded without --upstream-arch,
    its blocks equal those of ``torchaudio.pipelines.HUBERT_BASE.get_model()`` given the same state dict."""
    import torchaudio.pipelines as pipelines
    from torchaudio.models import wav2vec2_model

    bundle = pipelines.HUBERT_BASE
    torch.manual_seed(0)
    state = wav2vec2_model(**bundle._params).state_dict()
    path = tmp_path / "hubert_fairseq_base_ls960.pth"
    torch.save(state, path)
    monkeypatch.setattr(type(bundle), "_get_state_dict", lambda self, dl_kwargs: state)  # never download
    reference = bundle.get_model()
    del state
    assert check_upstream(str(path)) == "torchaudio"
    model, _ = load_upstream(str(path))
    assert model.arch["bundle"] == "HUBERT_BASE" and len(model.layer_names) == 13 and model.layer_sizes["layer12"] == 768
    wavs, samples = noise_batch((0.6,), seed=4)
    out = model.forward_layers(wavs, samples, model.layer_names)
    with torch.no_grad():
        blocks, _ = reference.extract_features(wavs)
    for k in (1, 6, 12):
        torch.testing.assert_close(out[f"layer{k}"][0][0], blocks[k - 1][0], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bad_torchaudio_checkpoints_are_one_line_naming_the_problem(tmp_path):
    path = make_tiny_upstream("wav2vec2", str(tmp_path / "w2v.pth"), fmt="torchaudio")
    params = str(tmp_path / "w2v.json")
    state = torch.load(path, weights_only=True)
    with pytest.raises(ManifestError, match="not the file name of a torchaudio.pipelines bundle; name its architecture "
                                            "with --upstream-arch"):
        check_upstream(path)
    with pytest.raises(ManifestError, match="--upstream-arch WAVLM_HUGE: not a wav2vec 2.0 / HuBERT / WavLM bundle"):
        check_upstream(path, "WAVLM_HUGE")
    folder = make_tiny_upstream("wavlm", str(tmp_path / "wavlm-folder"))
    with pytest.raises(ManifestError, match="--upstream-arch WAVLM_BASE is for torchaudio checkpoints; this is a hf"):
        check_upstream(folder, "WAVLM_BASE")
    cases = {"missing": ("encoder.transformer.layers.1.feed_forward.output_dense.weight", None,
                         "1 key(s) of the given architecture missing from the checkpoint: "
                         "encoder.transformer.layers.1.feed_forward.output_dense.weight"),
             "extra": ("adapter.weight", torch.zeros(3), "1 unexpected key(s) for the given architecture: adapter.weight"),
             "aux": ("aux.weight", torch.zeros(29, 32), None)}  # an ASR bundle's CTC head: ignored
    for name, (key, value, message) in cases.items():
        bad = dict(state)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        file = tmp_path / f"{name}.pth"
        torch.save(bad, file)
        if message is None:
            load_upstream(str(file), arch=resolve_arch(str(file), params))
            continue
        with pytest.raises(ManifestError) as err:
            load_upstream(str(file), arch=resolve_arch(str(file), params))
        assert "\n" not in str(err.value) and str(err.value) == f"{file}: {message}"
    # the early check (before stage 1) reads the keys without loading a weight
    with pytest.raises(ManifestError, match="1 key\\(s\\) of the given architecture missing"):
        check_upstream(str(tmp_path / "missing.pth"), params)
    wavlm_json = tmp_path / "wavlm.json"
    wavlm_json.write_text(json.dumps({**json.load(open(params)), "encoder_num_buckets": 32, "encoder_max_distance": 100}))
    with pytest.raises(ManifestError, match="key\\(s\\) of the given architecture missing"):
        check_upstream(path, str(wavlm_json))  # a wav2vec2 checkpoint named as a WavLM
    bad_heads = tmp_path / "heads.json"
    bad_heads.write_text(json.dumps({**json.load(open(params)), "encoder_num_heads": 5}))  # 32 dims / 5 heads
    with pytest.raises(ManifestError, match="do not fit torchaudio's wav2vec2_model"):
        check_upstream(path, str(bad_heads))
    proc = subprocess.run([sys.executable, "-m", "ser_modules.upstreams", "check", "--upstream-arch", params,
                           "--upstream", path], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "comes after the --upstream it describes" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ser_modules.upstreams", "check", "--upstream", path, "--upstream-arch",
                           params], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


# ---- the probe recipe with both formats -----------------------------------------------------------


@starts("checkpoint_exp")
def _start_checkpoint_exp(bg, session):
    demo, root = bg.start("tiny_demo"), bg.tmp.mktemp("checkpoints")

    def build():
        whisper = make_tiny_upstream("whisper", str(root / "base.pt"), fmt="openai-whisper")
        w2v = make_tiny_upstream("wav2vec2", str(root / "w2v tiny.pth"), fmt="torchaudio")  # a space in the path
        exp = root / "exp"
        proc = run_recipe("upstream_probe", exp, demo.result(), [
            "--upstream", whisper, "--upstream", w2v, "--upstream-arch", str(root / "w2v tiny.json"),
            "dump.dtype=float32", "ser.variants=[{name: MP, type: mp, asr: upstreams, layer: last, max_epochs: 2},"
            " {name: eGeMAPS-SVM, type: reference, C: [0.1]}]", "score.chance_runs=2", "score.tsne=False"])
        return exp, proc, root

    return bg.run(build)


@pytest.fixture(scope="module")
def checkpoint_exp(background):
    """recipes/upstream_probe stages 1-6 on the tiny demo with an openai-whisper .pt and a torchaudio .pth
    (its architecture as JSON), an MP on each last layer and the eGeMAPS reference."""
    return background.start("checkpoint_exp").result()


def test_probe_runs_end_to_end_on_openai_whisper_and_torchaudio_checkpoints(checkpoint_exp):
    exp, proc, root = checkpoint_exp
    described = {u["name"]: u for u in json.loads((exp / "asr" / "upstreams.json").read_text())["upstreams"]}
    assert sorted(described) == ["w2v-tiny", "whisper-base"]
    assert (described["whisper-base"]["kind"], described["w2v-tiny"]["kind"]) == ("openai-whisper", "torchaudio")
    assert described["w2v-tiny"]["arch"]["params"]["encoder_num_layers"] == 2
    assert "stage 2 upstream w2v-tiny: wav2vec2 (torchaudio), 2 layers + input" in proc.stdout
    results = pd.read_csv(exp / "results.csv")
    assert results["model"].tolist() == ["MP-whisper-base.layer2", "MP-w2v-tiny.layer2", "eGeMAPS-SVM"]
    assert results["complete"].all()
    text = (exp / "RESULTS.md").read_text()
    assert "| w2v-tiny | wav2vec2 | torchaudio |" in text and "| whisper-base | whisper | openai-whisper |" in text
    assert "Classical reference" in text
    for plot in ("ua_per_layer_whisper-base.png", "ua_per_layer_w2v-tiny.png"):
        assert (exp / "plots" / plot).is_file()


def test_an_export_of_a_checkpoint_upstream_copies_the_file_and_predicts_the_same(checkpoint_exp, tmp_path):
    from ser_modules.inference.export import export_variant
    from ser_modules.inference.recognizer import EmotionRecognizer

    exp, _, _ = checkpoint_exp
    manifest = pd.read_csv(exp / "data" / "emotion" / "standard" / "manifest.csv", keep_default_na=False)
    wavs = manifest["wav"].tolist()[:3]
    for variant, copied in (("MP-w2v-tiny.layer2", "upstream/w2v tiny/w2v tiny.pth"),
                            ("MP-whisper-base.layer2", "upstream/base/base.pt")):
        out = tmp_path / variant
        export_variant(str(exp), str(out), variant, folds="1")
        assert (out / copied).is_file()
        exported = pd.DataFrame(EmotionRecognizer.from_pretrained(str(out)).predict_files(wavs))
        original = pd.DataFrame(EmotionRecognizer.from_experiment(str(exp), variant, fold="session1").predict_files(wavs))
        cols = [c for c in original if c.startswith("p_")]
        pd.testing.assert_frame_equal(exported[cols], original[cols], atol=1e-6, rtol=0)


def test_the_layer_plot_draws_the_reference_row_as_a_line(monkeypatch, tmp_path):
    from ser_modules.report import plots
    from ser_modules.report.upstream import upstream_report

    drawn = {}
    monkeypatch.setattr(plots, "plot_layer_scores", lambda series, path, lines=None, title=None: drawn.update(lines) or path)
    results = pd.DataFrame([
        {"model": "MP-up.layer0", "type": "mp", "asr": "up", "layer": "layer0", "UA_mean": 0.5, "UA_std": 0.1},
        {"model": "MP-up.layer1", "type": "mp", "asr": "up", "layer": "layer1", "UA_mean": 0.6, "UA_std": 0.1},
        {"model": "eGeMAPS-SVM", "type": "reference", "asr": "", "layer": "", "UA_mean": 0.55, "UA_std": 0.05}])
    figures, _ = upstream_report(results, [], [{"name": "up", "model_type": "wavlm"}], str(tmp_path), str(tmp_path))
    assert drawn == {"eGeMAPS-SVM (reference)": 0.55} and figures == [str(tmp_path / "ua_per_layer_up.png")]
