"""Whisper upstreams (ser_modules/upstreams/): utterances over 30 s encoded in consecutive 30 s windows,
and folders holding only the encoder's weights loaded without transformers' table of missing decoder
keys. Tiny random models built from configs (utils/make_tiny_upstream.py), as in test_upstream.py."""

import logging
import os
import shutil
import sys

import pytest
import torch

from ser_modules.upstreams.loading import load_upstream
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "utils"))
from make_tiny_upstream import hf_config, make_tiny_upstream  # noqa: E402

SR = 16000


def noise(seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(int(seconds * SR), generator=torch.Generator().manual_seed(seed)) * 0.1


def layers_of(model, wav: torch.Tensor) -> dict:
    """``{layer: [T, D]}`` of one utterance, cropped to its frames."""
    out = model.forward_layers(wav[None], torch.tensor([len(wav)]), model.layer_names)
    return {name: hidden[0, : int(frames[0])] for name, (hidden, frames) in out.items()}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    folder = make_tiny_upstream("whisper", str(tmp_path_factory.mktemp("whisper") / "tiny"), layers=2, hidden=32)
    return folder, load_upstream(folder)[0]


def test_a_70_second_utterance_is_encoded_in_consecutive_30_second_windows(whisper):
    _, model = whisper
    wav = noise(70)
    whole = layers_of(model, wav)
    windows = {(0, 1500): wav[: 30 * SR], (1500, 3000): wav[30 * SR : 60 * SR], (3000, 3500): wav[60 * SR :]}
    alone = {span: layers_of(model, part) for span, part in windows.items()}  # each window run by itself
    assert sorted(whole) == model.layer_names == ["layer0", "layer1", "layer2"]
    for name in model.layer_names:
        assert whole[name].shape == (3500, 32)  # ceil(70 * 16000 / 320)
        for (start, end), states in alone.items():
            torch.testing.assert_close(whole[name][start:end], states[name], atol=1e-5, rtol=0)


def test_long_and_short_utterances_in_one_padded_batch(whisper):
    _, model = whisper
    long, short = noise(31.3, seed=1), noise(2.0, seed=2)  # 31.3 s: a second window of 1.3 s
    wavs = torch.zeros(2, len(long))
    wavs[0], wavs[1, : len(short)] = long, short
    samples = torch.tensor([len(long), len(short)])
    out = model.forward_layers(wavs, samples, ["layer2"])["layer2"]
    assert out[1].tolist() == model.frames(samples).tolist() == [1565, 100]
    assert out[0].shape == (2, 1565, 32)
    torch.testing.assert_close(out[0][0], layers_of(model, long)["layer2"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0][1, :100], layers_of(model, short)["layer2"], atol=1e-5, rtol=0)


def test_a_20_second_utterance_gives_the_encoder_on_its_padded_window_cropped(whisper):
    """Below 30 s nothing changed: the encoder on the mel features padded to 30 s, cropped (bit-identical)."""
    import transformers

    folder, model = whisper
    wav = noise(20, seed=3)
    encoder = transformers.WhisperModel.from_pretrained(folder, local_files_only=True).get_encoder().eval()
    features = transformers.WhisperFeatureExtractor(feature_size=80)(wav.numpy(), sampling_rate=SR,
                                                                      return_tensors="pt").input_features
    with torch.no_grad():
        states = encoder(features, output_hidden_states=True).hidden_states
    got = layers_of(model, wav)
    for k, name in enumerate(model.layer_names):
        assert states[k].shape[1] == 1500 and got[name].shape == (1000, 32)
        assert torch.equal(got[name], states[k][0, :1000]), name


@pytest.fixture(scope="module")
def unpadded(whisper):
    folder, _ = whisper
    return load_upstream(folder, whisper_window="utterance")[0]


def test_utterance_windows_in_a_padded_batch_equal_each_utterance_alone(unpadded):
    wavs = [noise(5.0, seed=5), noise(2.01, seed=6), noise(31.3, seed=7), noise(0.03, seed=8)]
    samples = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(samples.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    out = unpadded.forward_layers(batch, samples, unpadded.layer_names)
    assert out["layer2"][1].tolist() == [250, 101, 1565, 2]  # ceil(S / 320), as in 30 s windows
    for i, w in enumerate(wavs):
        alone = layers_of(unpadded, w)
        for name in unpadded.layer_names:
            assert alone[name].shape == (int(out[name][1][i]), 32)
            torch.testing.assert_close(out[name][0][i, : len(alone[name])], alone[name], atol=1e-5, rtol=0)
            assert not out[name][0][i, len(alone[name]) :].any()  # zeros after each one's frames
    empty = unpadded.forward_layers(torch.zeros(2, 8000), torch.tensor([8000, 0]), ["layer2"])["layer2"]
    assert empty[1].tolist() == [25, 0] and empty[0].shape == (2, 25, 32)  # an empty utterance: no frame
    # a 31.3 s utterance: a whole 30 s window (as the padded one encodes it, up to its last frame), then 1.3 s alone
    first, rest = layers_of(unpadded, wavs[2][: 30 * SR]), layers_of(unpadded, wavs[2][30 * SR :])
    for name in unpadded.layer_names:
        torch.testing.assert_close(out[name][0][2, :1565], torch.cat([first[name], rest[name]]), atol=1e-5, rtol=0)


def test_unpadded_windows_change_the_layers_above_the_input_only_by_the_attention(whisper, unpadded):
    """layer0 (convolutions + positions) is the padded window's but for the last frame, whose convolution
    sees the mel frame after the speech; the blocks differ because no frame attends to 30 s of padding."""
    _, padded = whisper
    wav = noise(3.5, seed=9)
    a, b = layers_of(padded, wav), layers_of(unpadded, wav)
    assert a["layer0"].shape == b["layer0"].shape == (175, 32)
    torch.testing.assert_close(a["layer0"][:-1], b["layer0"][:-1], atol=1e-5, rtol=0)
    assert (a["layer0"][-1] - b["layer0"][-1]).abs().max() > 1e-4
    assert (a["layer2"] - b["layer2"]).abs().max() > 1e-3


def test_the_window_is_described_keyed_and_rebuilt(whisper, tmp_path):
    from ser_modules.asr.saved_models import load_asr_model
    from ser_modules.upstreams.formats import upstream_digest
    from ser_modules.upstreams.loading import describe_upstream
    from ser_modules.utils.fileio import write_json

    folder, _ = whisper
    padded, unpadded = (describe_upstream("w", folder, whisper_window=w) for w in ("30s", "utterance"))
    assert (padded["whisper_window"], unpadded["whisper_window"]) == ("30s", "utterance")
    assert padded["sha1"] == upstream_digest(folder) != unpadded["sha1"]  # stores of 30 s windows made before: reused
    write_json(str(tmp_path / "model.json"), {"upstream": {"source": folder, "kind": "hf", "arch": None,
                                                            "whisper_window": "utterance"}, "sha1": unpadded["sha1"]})
    model = load_asr_model(str(tmp_path / "model.pt"))[0]
    assert model.whisper_window == "utterance"
    with pytest.raises(ManifestError, match="whisper_window: '10s' is not a Whisper window"):
        describe_upstream("w", folder, whisper_window="10s")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny random Whisper saved six ways: WhisperForConditionalGeneration and WhisperModel folders (the
    whole model), its encoder alone with ``encoder.*`` keys (model.safetensors), ``model.encoder.*`` keys
    (pytorch_model.bin) or the encoder's own names, and the encoder with an audio-classification head."""
    import transformers
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("whisper_folders")
    torch.manual_seed(0)
    generation = transformers.WhisperForConditionalGeneration(hf_config("whisper", 2, 32, False))
    generation.save_pretrained(root / "generation")
    generation.model.save_pretrained(root / "full")
    encoder = {k: v.clone() for k, v in generation.model.state_dict().items() if k.startswith("encoder.")}
    for name in ("encoder", "model-encoder"):
        (root / name).mkdir()
        shutil.copy(root / "full" / "config.json", root / name)
    save_file(encoder, str(root / "encoder" / "model.safetensors"))
    torch.save({f"model.{k}": v for k, v in encoder.items()}, root / "model-encoder" / "pytorch_model.bin")
    for name in ("bare", "classification"):
        (root / name).mkdir()
        shutil.copy(root / "full" / "config.json", root / name)
    # WhisperEncoder.save_pretrained: the encoder's own key names, no prefix
    save_file({k[len("encoder."):]: v for k, v in encoder.items()}, str(root / "bare" / "model.safetensors"))
    # WhisperForAudioClassification (an emotion classifier, say): the encoder plus its head, which is ignored
    head = {"projector.weight": torch.zeros(8, 32), "projector.bias": torch.zeros(8),
            "classifier.weight": torch.zeros(4, 8), "classifier.bias": torch.zeros(4), "layer_weights": torch.ones(3)}
    save_file({**encoder, **head}, str(root / "classification" / "model.safetensors"))
    return root


@pytest.fixture
def quiet(caplog, capfd, recwarn):
    """Checks that nothing is said about missing keys: no transformers log record at its default level
    (warning; its logger does not propagate by default: turned on here), no warning, nothing on stdout or
    stderr."""
    logger = logging.getLogger("transformers")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.WARNING, logger="transformers")
    capfd.readouterr()

    def check():
        out, err = capfd.readouterr()
        said = [*(r.getMessage() for r in caplog.records), *(str(w.message) for w in recwarn), out, err]
        assert not [s for s in said if "missing" in s.lower() or "load report" in s.lower()], said
        assert not caplog.records and not recwarn and out == err == "", said

    yield check
    logger.propagate = propagate


def test_encoder_only_and_full_whisper_folders_give_the_same_layers(folders, quiet):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    wav = noise(2.5, seed=4)
    layers = {}
    for name in ("encoder", "model-encoder", "full", "generation", "bare", "classification"):
        model, features = load_upstream(str(folders / name))
        assert isinstance(model.model, WhisperEncoder) and features.win == 400
        model.train()  # the encoder stays frozen in eval mode whatever the caller's mode
        assert not model.model.training and not any(p.requires_grad for p in model.model.parameters())
        layers[name] = layers_of(model, wav)
    quiet()
    for name in ("model-encoder", "full", "generation", "bare", "classification"):
        for layer, states in layers["encoder"].items():
            assert states.shape == (125, 32) and torch.equal(layers[name][layer], states), (name, layer)


def test_a_missing_encoder_key_is_one_line_naming_it(folders, tmp_path, quiet):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "encoder"
    shutil.copytree(folders / "encoder", folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["encoder.layers.1.fc2.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ManifestError) as err:
        load_upstream(str(folder))
    quiet()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder}: ")
    assert "lack 1 key(s): layers.1.fc2.weight" in message


def test_unexpected_keys_are_one_line_naming_them(folders, tmp_path, quiet):
    folder = tmp_path / "model-encoder"
    shutil.copytree(folders / "model-encoder", folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state.update({"adapter.weight": torch.zeros(4, 32), "model.encoder.layers.9.fc1.weight": torch.zeros(1)})
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ManifestError) as err:
        load_upstream(str(folder))
    quiet()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder}: 2 unexpected key(s)")
    assert "adapter.weight" in message and "model.encoder.layers.9.fc1.weight" in message
