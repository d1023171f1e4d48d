"""Fine-tuned upstream tops (issue 40): a variant trains its upstream's top k blocks with its head from the
stored layer below them; the model equals the frozen upstream's head at the start, gradients reach exactly the
top k blocks and the head, and a training killed after an epoch resumes to the uninterrupted result."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import transformers

# Resolved at collection, before the session's background runs import transformers in their threads: a lazy
# attribute resolved by two threads at once can fail ("module 'transformers' has no attribute 'AutoModel'").
transformers.AutoModel  # noqa: B018

from ser_modules.data.folds import load_folds
from ser_modules.models.ser import FineTuneMP, FineTuneRNN
from ser_modules.ser.finetune import FineTunedTop, finetune_param_groups, warmup_factor
from ser_modules.ser.variants import VariantSpec, build_model
from ser_modules.upstreams.loading import load_upstream
from ser_modules.upstreams.top_blocks import top_blocks
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "utils"))
from make_tiny_upstream import make_tiny_upstream  # noqa: E402


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory):
    path = make_tiny_upstream("wavlm", str(tmp_path_factory.mktemp("finetune") / "wavlm"), layers=3, hidden=32)
    upstream, _ = load_upstream(path)
    g = torch.Generator().manual_seed(0)
    wavs, samples = torch.randn(3, 12000, generator=g) * 0.1, torch.tensor([12000, 8000, 5000])
    for i, n in enumerate(samples.tolist()):
        wavs[i, n:] = 0
    return upstream, upstream.forward_layers(wavs, samples, upstream.layer_names)


@pytest.mark.parametrize("head", ["mp", "rnn"])
def test_a_fine_tuned_top_starts_as_the_frozen_upstream_under_its_head(wavlm, head):
    upstream, layers = wavlm
    spec = VariantSpec.from_dict({"name": "top", "type": head, "asr": "u", "layer": "layer1", "hidden": 8,
                                  "finetune_blocks": 2})
    model = build_model(spec, {"asr": 32}, 4, 0.0)
    assert isinstance(model, FineTunedTop) and isinstance(model.head, FineTuneMP if head == "mp" else FineTuneRNN)
    model.attach(top_blocks(upstream, 2)).eval()
    with torch.no_grad():  # blocks 2-3 on the stored layer1, then the head = the head on the upstream's layer3
        got = model(*layers["layer1"])
        want = model.head(*layers["layer3"])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert not VariantSpec.from_dict({**spec.options, **{"name": "top", "type": head, "asr": "u", "layer": "l"}}).pooled


def test_a_weighted_sum_over_fine_tuned_and_frozen_layers_starts_as_the_frozen_sum(wavlm):
    """layer0..layer1 stored, blocks 2-3 fine-tuned: at the start the sum equals the frozen weighted sum of all
    four layers of the upstream; the layer logits learn in their own group, named after all four layers."""
    from ser_modules.models.ser import WeightedLayerSum
    from ser_modules.ser.probe import expand_variants

    upstream, layers = wavlm
    template = {"name": "wtop", "type": "weighted", "head": "mp", "asr": "upstreams", "layer_norm": True,
                "finetune_blocks": 2}
    (v,) = expand_variants([template], [{"name": "u", "layers": [f"layer{i}" for i in range(4)],
                                         "dims": {f"layer{i}": 32 for i in range(4)}}])
    assert (v["name"], v["layer"], v["layers"], v["finetune_blocks"]) == ("wtop-u", "weighted", ["layer0", "layer1"], 2)
    spec = VariantSpec.from_dict(v)
    assert spec.summed_layers == ["layer0", "layer1", "layer2", "layer3"] and not spec.pooled
    model = build_model(spec, {"asr": 32, "layers": 2}, 4, 0.0)
    assert isinstance(model.head, WeightedLayerSum) and model.head.n_layers == 4
    model.attach(top_blocks(upstream, 2)).eval()
    with torch.no_grad():
        model.head.layer_logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        stored = torch.cat([layers["layer0"][0], layers["layer1"][0]], dim=-1)
        got = model(stored, layers["layer1"][1])
        want = model.head(torch.cat([layers[f"layer{i}"][0] for i in range(4)], dim=-1), layers["layer1"][1])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    groups = finetune_param_groups(model, 1e-3, 1e-5, layer_weights_lr=0.05)
    assert [g["lr"] for g in groups] == [1e-3, 1e-5, 0.05] and groups[2]["params"] == [model.head.layer_logits]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    everything = expand_variants([{**template, "finetune_blocks": "all"}], [{"name": "u", "layers": [f"layer{i}" for i in range(4)]}])
    assert (everything[0]["layers"], everything[0]["finetune_blocks"]) == (["layer0"], 3)


def test_a_fine_tuned_top_reading_the_waveform_equals_the_one_reading_stored_layers(wavlm):
    """finetune_input: waveform runs the frozen upstream below the blocks per batch: the same outputs as the model
    on the stored layers, no gradient into the upstream, nothing of it in the fold model's state dict."""
    from ser_modules.ser.inputs import collate
    from ser_modules.ser.variants import forward

    upstream, layers = wavlm
    g = torch.Generator().manual_seed(0)
    wavs, samples = torch.randn(3, 12000, generator=g) * 0.1, torch.tensor([12000, 8000, 5000])
    for i, n in enumerate(samples.tolist()):
        wavs[i, n:] = 0
    base = {"name": "w", "type": "weighted", "head": "rnn", "asr": "u", "layer": "weighted", "hidden": 8,
            "layers": ["layer0", "layer1"], "finetune_blocks": 2}
    stored = VariantSpec.from_dict(base)
    spec = VariantSpec.from_dict({**base, "finetune_input": "waveform"})
    assert spec.reads_waveform and not stored.reads_waveform
    dims = {"asr": 32, "layers": 2}
    want_model = build_model(stored, dims, 4, 0.0).attach(top_blocks(upstream, 2)).eval()
    model = build_model(spec, dims, 4, 0.0)
    with pytest.raises(ValueError, match="needs the upstream below its blocks"):
        model.attach(top_blocks(upstream, 2))
    model.attach(top_blocks(upstream, 2), bottom=upstream).eval()
    model.load_state_dict(want_model.state_dict())  # the same keys: the upstream is not part of the fold model
    batch = collate([{"id": str(i), "label": 0, "wav": wavs[i, :n]} for i, n in enumerate(samples.tolist())])
    with torch.no_grad():
        got = forward(model, spec, batch, "cpu")
        want = want_model(torch.cat([layers["layer0"][0], layers["layer1"][0]], dim=-1), layers["layer1"][1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    model.train()
    torch.nn.functional.cross_entropy(forward(model, spec, batch, "cpu"), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is None for p in upstream.parameters())
    assert all(p.grad is not None for p in model.blocks.blocks.parameters())
    with pytest.raises(ManifestError, match="finetune_input"):
        VariantSpec.from_dict({**base, "finetune_input": "mel"})
    model.double()  # moving the model (to a GPU, another dtype) moves the frozen upstream it runs
    assert {p.dtype for p in upstream.parameters()} == {torch.float64}
    upstream.float()


def test_whole_encoder_fine_tuning_from_the_waveform_freezes_only_the_cnn(wavlm):
    """finetune_blocks: all from the waveform, as SpeechBrain's whole-encoder recipes: the CNN feature encoder frozen,
    the feature projection and positional convolution (the stem) learn with every block at the blocks' rate; at
    the start the model equals the one reading the stored layer0; a fold's saved weights restore the stem."""
    from ser_modules.ser.inputs import collate
    from ser_modules.ser.variants import forward

    upstream, layers = wavlm
    g = torch.Generator().manual_seed(0)
    wavs, samples = torch.randn(3, 12000, generator=g) * 0.1, torch.tensor([12000, 8000, 5000])
    for i, n in enumerate(samples.tolist()):
        wavs[i, n:] = 0
    base = {"name": "all", "type": "mp", "asr": "u", "layer": "layer0", "finetune_blocks": 3}
    spec = VariantSpec.from_dict({**base, "finetune_input": "waveform"})
    stored = build_model(VariantSpec.from_dict(base), {"asr": 32}, 4, 0.0).attach(top_blocks(upstream, 3)).eval()
    with pytest.raises(ValueError, match="only a model reading the waveform"):
        build_model(VariantSpec.from_dict(base), {"asr": 32}, 4, 0.0).attach(top_blocks(upstream, 3, stem=True))
    model = build_model(spec, {"asr": 32}, 4, 0.0).attach(top_blocks(upstream, 3, stem=True), bottom=upstream)
    missing = model.load_state_dict(stored.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("blocks.stem.") for k in missing)  # the stem: the model's own, trained
    batch = collate([{"id": str(i), "label": 0, "wav": wavs[i, :n]} for i, n in enumerate(samples.tolist())])
    with torch.no_grad():
        got = forward(model.eval(), spec, batch, "cpu")
        want = stored(*layers["layer0"])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    model.train()
    torch.nn.functional.cross_entropy(forward(model, spec, batch, "cpu"), torch.tensor([0, 1, 2])).backward()
    stem = list(model.blocks.stem.parameters())
    assert stem and all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem)
    assert all(p.grad is None for p in upstream.parameters())  # the CNN (and the rest of the frozen upstream)
    groups = finetune_param_groups(model, 1e-3, 1e-5)
    assert {id(p) for p in stem} <= {id(p) for p in groups[1]["params"]} and groups[1]["lr"] == 1e-5
    with torch.no_grad():
        model.blocks.stem.pos_conv.conv.bias.add_(0.5)  # a trained stem, saved with the fold and loaded before attach
    restored = build_model(spec, {"asr": 32}, 4, 0.0)
    restored.load_state_dict(model.state_dict())
    restored.attach(top_blocks(upstream, 3, stem=True), bottom=upstream)
    with torch.no_grad():
        torch.testing.assert_close(forward(restored.eval(), spec, batch, "cpu"), forward(model.eval(), spec, batch, "cpu"))
    # Runs made before the stem trained are not taken for finished ones, and their weights are refused in one line
    from types import SimpleNamespace

    from ser_modules.data.folds import Fold
    from ser_modules.ser.training import run_key

    fold = Fold(name="f1", test_speakers=["a"], valid_speakers=["b"], train=["u1"], valid=["u2"], test=["u3"])
    inputs = SimpleNamespace(asr_store=lambda asr, fold: SimpleNamespace(folder="/exp/dump/u/abc"))
    keys = [run_key(s, fold, 0, ["a"], inputs, {"lr": 1e-3}) for s in (spec, VariantSpec.from_dict(base))]
    assert keys[0]["trains_stem"] and "trains_stem" not in keys[1]
    old = build_model(spec, {"asr": 32}, 4, 0.0)
    old.load_state_dict(stored.state_dict())  # a whole-encoder model's weights of before: no stem
    with pytest.raises(ValueError, match="saved before whole-encoder fine-tuning trained"):
        old.attach(top_blocks(upstream, 3, stem=True), bottom=upstream)


def test_gradients_reach_exactly_the_top_blocks_and_the_head(wavlm):
    upstream, layers = wavlm
    spec = VariantSpec.from_dict({"name": "top", "type": "mp", "asr": "u", "layer": "layer2", "finetune_blocks": 1})
    model = build_model(spec, {"asr": 32}, 4, 0.0).attach(top_blocks(upstream, 1))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(*layers["layer2"]), torch.tensor([0, 1, 2]))
    loss.backward()
    top = dict(model.blocks.blocks.named_parameters())
    assert top and all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in top.items()
                       if "rel_attn_embed" not in n)  # (block 1's bias embedding: not in block 3)
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.blocks.frozen_bias.parameters())  # block 1's frozen bias embedding
    assert not any(k.startswith("blocks.frozen_bias") for k in model.state_dict())  # rebuilt, not stored
    model.double()  # moved with the blocks all the same
    assert {p.dtype for p in model.blocks.frozen_bias.parameters()} == {torch.float64}
    model.float()
    assert all(p.grad is None for p in upstream.parameters())  # the frozen upstream itself
    groups = finetune_param_groups(model, 1e-3, None)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-3 / 30)] and groups[1]["upstream_blocks"]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_warm_up_and_bad_keys():
    assert [warmup_factor(s, 4) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0] and warmup_factor(3, 0) == 1.0
    for bad, message in [({"type": "iaan", "finetune_blocks": 1}, "finetune_blocks"),
                         ({"type": "mp", "finetune_blocks": 1.5}, "finetune_blocks"),
                         ({"type": "mp", "finetune_blocks": "all"}, "finetune_blocks: all needs asr: upstreams"),
                         ({"type": "mp", "finetune_blocks": 1, "asr_norm": "train"}, "asr_norm"),
                         ({"type": "mp", "finetune_blocks": 1, "upstream_lr": 0}, "upstream_lr"),
                         ({"type": "mp", "finetune_blocks": 1, "warmup_steps": -1}, "warmup_steps")]:
        with pytest.raises(ManifestError, match=message):
            VariantSpec.from_dict({"name": "v", "asr": "u", "layer": "layer1", **bad})


TRAIN = """
import json, sys
from ser_modules.data.folds import load_folds
from ser_modules.ser.inputs import SERInputs
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec
import pandas as pd
a = json.loads(sys.argv[1])
manifest = pd.read_csv(a["manifest"], keep_default_na=False, dtype={"ID": str})
classes = sorted(manifest["emotion"].unique())
fold = load_folds(a["folds"])[0]
train_fold_run(VariantSpec.from_dict(a["variant"]), fold, 0, manifest, classes, SERInputs(a["stores"]), a["hp"], a["out"])
"""


def test_a_killed_fine_tuning_resumes_to_the_uninterrupted_result(upstream_exp, tmp_path):
    exp, _ = upstream_exp
    upstream = json.loads((exp / "asr" / "upstreams.json").read_text())["upstreams"][0]
    n_blocks = len(upstream["layers"]) - 1
    variant = {"name": "MP-top1", "type": "mp", "asr": upstream["name"], "layer": f"layer{n_blocks - 1}",
               "finetune_blocks": 1, "upstream_lr": 1e-3, "warmup_steps": 3}
    hp = {"seed": 1, "lr": 0.01, "dropout": 0.1, "batch_size": 8, "max_epochs": 4, "sortagrad_epochs": 0,
          "anneal_factor": 0.5, "anneal_patience": 100, "min_lr": 1e-8, "max_grad_norm": 5.0}
    args = {"manifest": str(exp / "data" / "emotion" / "standard" / "manifest.csv"),
            "folds": str(exp / "data" / "emotion" / "standard" / "folds_loso.json"),
            "stores": str(exp / "dump" / "stores_standard.json"), "variant": variant, "hp": hp}

    def run(out, env=None):
        return subprocess.run([sys.executable, "-c", TRAIN, json.dumps({**args, "out": str(out)})], cwd=REPO,
                              env={**os.environ, **(env or {})}, capture_output=True, text=True)

    assert run(tmp_path / "whole").returncode == 0
    killed = run(tmp_path / "resumed", {"SER_FAULT": "epoch:2:SIGKILL"})
    assert killed.returncode != 0  # killed after its second epoch, its state saved
    assert run(tmp_path / "resumed").returncode == 0, "resume failed"
    whole = pd.read_csv(tmp_path / "whole" / "predictions.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "predictions.csv")
    pd.testing.assert_frame_equal(resumed, whole)
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert len(history) == 4
    state = torch.load(tmp_path / "whole" / "model.pt")
    # the fold model holds the fine-tuned block and the head, not the upstream's other blocks
    assert {k.split(".")[0] for k in state} == {"head", "blocks"}
    assert not any(k.startswith("blocks.blocks.1") for k in state)
    assert load_folds(args["folds"])


def test_a_template_fine_tunes_the_top_blocks_of_each_upstream():
    from ser_modules.ser.probe import expand_variants

    ups = [{"name": "whisper", "layers": [f"layer{i}" for i in range(7)]},
           {"name": "wavlm", "layers": [f"layer{i}" for i in range(13)]}]
    out = expand_variants([{"name": "MP-top2", "type": "mp", "asr": "upstreams", "finetune_blocks": 2}], ups)
    assert [(v["name"], v["asr"], v["layer"]) for v in out] == [("MP-top2-whisper", "whisper", "layer4"),
                                                               ("MP-top2-wavlm", "wavlm", "layer10")]
    out = expand_variants([{"name": "RNN-all", "type": "rnn", "asr": "upstreams", "finetune_blocks": "all"}], ups)
    assert [(v["name"], v["layer"], v["finetune_blocks"]) for v in out] == [("RNN-all-whisper", "layer0", 6),
                                                                          ("RNN-all-wavlm", "layer0", 12)]
    with pytest.raises(ManifestError, match="finetune_blocks 8 of whisper, which has 6 blocks"):
        expand_variants([{"name": "MP-top8", "type": "mp", "asr": "upstreams", "finetune_blocks": 8}], ups[:1])


def test_an_exported_fine_tuned_top_predicts_as_the_experiment(upstream_exp, tmp_path):
    """The export holds each fold's fine-tuned block and head beside the copied upstream; loaded by
    EmotionRecognizer.from_pretrained and by SpeechBrain's foreign_class (whose pretrainer loads the weights
    before the blocks exist), it answers as the experiment."""
    import shutil

    import numpy as np
    from speechbrain.inference.interfaces import foreign_class

    from ser_modules.inference.export import export_variant
    from ser_modules.inference.recognizer import EmotionRecognizer

    exp = tmp_path / "exp"
    shutil.copytree(upstream_exp[0], exp, ignore=shutil.ignore_patterns("dump"))
    variant = "weighted-MP-top1-wavlm-tiny"  # stored layer0..1 and the fine-tuned block's output, summed
    manifest = pd.read_csv(exp / "data" / "emotion" / "standard" / "manifest.csv", keep_default_na=False)
    files = manifest["wav"].tolist()[:4]

    def probs(rec):
        return np.array([[r[f"p_{c}"] for c in rec.classes] for r in rec.predict_files(files)])

    want = probs(EmotionRecognizer.from_experiment(str(exp), variant, device="cpu"))
    out = tmp_path / "export"
    exported = export_variant(str(exp), str(out), variant)
    shutil.rmtree(exp)
    assert any(n.startswith("upstream/") for n in exported["files"])
    weights = [n for n in exported["files"] if n.startswith(f"ser/{variant}/") and n.endswith("model.pt")]
    state = torch.load(out / weights[0])
    assert {k.split(".")[0] for k in state} == {"head", "blocks"} and not any("blocks.blocks.1" in k for k in state)
    np.testing.assert_allclose(probs(EmotionRecognizer.from_pretrained(str(out), device="cpu")), want, atol=1e-6)
    rec = foreign_class(source=str(out), pymodule_file="custom_interface.py", classname="SpeechEmotionRecognizer",
                        savedir=str(tmp_path / "sb"))
    got = rec.classify_file(files[0])["probabilities"]
    np.testing.assert_allclose([got[c] for c in rec.recognizer.classes], want[0], atol=1e-6)


def test_whisper_stored_in_30s_windows_skips_a_fine_tuned_variant_with_the_reason(tmp_path):
    from ser_modules.ser.jobs import skip_reason

    (tmp_path / "asr").mkdir()
    spec = VariantSpec.from_dict({"name": "MP-top1-w", "type": "mp", "asr": "w", "layer": "layer5", "finetune_blocks": 1})
    for window, skipped in (("30s", True), ("utterance", False)):
        (tmp_path / "asr" / "upstreams.json").write_text(json.dumps({"upstreams": [{"name": "w", "whisper_window": window}]}))
        reason = skip_reason(spec, True, {"w": {}}, [], str(tmp_path))
        assert (reason is not None and "needs whisper_window: utterance" in reason) == skipped


@pytest.mark.parametrize("size", ["paper", "demo"])
def test_the_upstream_recipes_configured_variants_are_valid(size):
    """Every variant of upstream_probe's shipped stage-5 configuration expands over a 6-block upstream and passes
    the variant checks; the paper's fine-tuned rows read the layers below their blocks (the waveform for MP-all)."""
    from hyperpyyaml import load_hyperpyyaml

    from ser_modules.ser.probe import expand_variants

    conf = os.path.join(REPO, "recipes", "upstream_probe", "conf", *(["demo"] if size == "demo" else []), "ser.yaml")
    with open(conf) as f:
        variants = load_hyperpyyaml(f, overrides={"output_folder": "x"} if size == "paper" else None)["variants"]
    layers = [f"layer{i}" for i in range(7)]
    expanded = expand_variants(variants, [{"name": "w", "layers": layers, "dims": {n: 512 for n in layers}}])
    specs = {v["name"]: VariantSpec.from_dict(v) for v in expanded}
    tuned = {n: (s.finetuned, s.layers, s.reads_waveform) for n, s in specs.items() if s.finetuned}
    if size == "paper":
        assert tuned == {"MP-top2-w": (2, ["layer4"], False), "RNN-top2-w": (2, ["layer4"], False),
                         "weighted-MP-norm-top2-w": (2, layers[:5], False), "MP-all-w": (6, ["layer0"], True)}
    else:
        assert tuned and all(k in (1, 2) and not waveform for k, _, waveform in tuned.values())
