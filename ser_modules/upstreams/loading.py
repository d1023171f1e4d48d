"""Loading an upstream from a local folder or checkpoint file (:func:`load_upstream`) and describing
it (:func:`describe_upstream`, stage 2 of upstream_probe); nothing is ever downloaded.

A Whisper folder is read as transformers' ``WhisperEncoder`` with the encoder's weights only
(:func:`load_whisper_encoder`): a folder of the whole model or of the encoder alone.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ser_modules.upstreams.checkpoints import (
    build_torchaudio,
    first_keys,
    load_openai_whisper,
    load_whisper_state,
    resolve_arch,
)
from ser_modules.upstreams.encoders import (
    SAMPLE_RATE,
    HFUpstream,
    SpeechBrainUpstream,
    TorchaudioUpstream,
    WaveformInput,
)
from ser_modules.upstreams.formats import HF_WEIGHTS, read_config, upstream_digest, upstream_kind
from ser_modules.utils.fileio import ManifestError

WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration's, WhisperModel's


# Not the upstream: the decoder and its LM head, and the head of WhisperForAudioClassification (its encoder is).
WHISPER_IGNORED_PREFIXES = ("model.decoder.", "decoder.", "proj_out.", "projector.", "classifier.", "layer_weights")


def load_hf(path: str, whisper_window: str = "30s") -> HFUpstream:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model_type = read_config(path)["model_type"]
    if model_type == "whisper":
        return HFUpstream(load_whisper_encoder(path), model_type, whisper_window)
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: cannot load the transformers model ({str(err).splitlines()[0]})") from err
    return HFUpstream(model, model_type)


def load_whisper_encoder(path: str) -> nn.Module:
    """transformers' ``WhisperEncoder`` from a Whisper folder, built from its ``config.json`` and given the
    encoder's weights read here: keys ``model.encoder.*`` (WhisperForConditionalGeneration), ``encoder.*``
    (WhisperModel, WhisperForAudioClassification, or a folder of the encoder alone) or the encoder's own
    names (``WhisperEncoder.save_pretrained``); the decoder's, ``proj_out`` and a classification head's
    keys are ignored.
    ``from_pretrained`` would log a table of every decoder key an encoder-only folder lacks; here a missing
    or an unexpected key is a one-line :class:`ManifestError`. Its dtype is ``from_pretrained``'s default
    (``dtype="auto"``: the config's, else the weights')."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    try:
        config = WhisperConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: cannot read the Whisper config ({str(err).splitlines()[0]})") from err
    with torch.device("meta"):  # only its key names
        keys = list(WhisperEncoder(config).state_dict())
    state = whisper_encoder_state(path, read_weights(path), keys)
    dtype = config.dtype or next(v.dtype for v in state.values() if v.is_floating_point())
    return load_whisper_state(path, config, state, getattr(torch, dtype) if isinstance(dtype, str) else dtype)


def read_weights(path: str) -> dict:
    """The state dict in an HF folder's weights file (``model.safetensors`` first, as transformers)."""
    file = next(os.path.join(path, w) for w in HF_WEIGHTS if os.path.isfile(os.path.join(path, w)))
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors' and pickle's own error types: one line naming the file
        raise ManifestError(f"{file}: cannot read the weights ({str(err).splitlines()[0]})") from err


def whisper_encoder_state(path: str, state: dict, keys: list[str]) -> dict:
    """The encoder's entries of a Whisper ``state``, named as ``keys`` (``WhisperEncoder``'s own, in order)."""
    known, encoder, unexpected = set(keys), {}, []
    for key, value in state.items():
        # WhisperEncoder.save_pretrained writes the encoder's own names, without a prefix
        prefix = next((p for p in WHISPER_ENCODER_PREFIXES if key.startswith(p)), "" if key in known else None)
        if prefix is not None and key[len(prefix):] in known:
            encoder[key[len(prefix):]] = value
        elif prefix is not None or not key.startswith(WHISPER_IGNORED_PREFIXES):
            unexpected.append(key)
    if unexpected:
        raise ManifestError(f"{path}: {len(unexpected)} unexpected key(s) in the Whisper weights (neither its encoder's "
                            f"nor its decoder's): {first_keys(unexpected)}")
    return encoder


def load_speechbrain(path: str) -> SpeechBrainUpstream:
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, DEFAULT_TRANSFER_HOOKS, get_default_hook

    yaml_path = os.path.join(path, "hyperparams.yaml")
    with open(yaml_path, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f)
    if not isinstance(hp.get("encoder"), nn.Module):
        raise ManifestError(f"{yaml_path}: defines no `encoder` module")
    loadables = getattr(hp.get("pretrainer"), "loadables", None) or {"encoder": hp["encoder"]}
    for name, obj in loadables.items():
        ckpt = os.path.join(path, f"{name}.ckpt")
        if not os.path.isfile(ckpt):
            raise ManifestError(f"{path}: no checkpoint {name}.ckpt for the pretrainer's loadable {name!r}")
        transfer = get_default_hook(obj, DEFAULT_TRANSFER_HOOKS)
        if transfer is not None:
            transfer(obj, ckpt)
        else:
            get_default_hook(obj, DEFAULT_LOAD_HOOKS)(obj, ckpt, end_of_epoch=False)
    feats = hp.get("compute_features")
    win = int(round(getattr(feats, "win_length", 25) * SAMPLE_RATE / 1000)) if feats is not None else 1
    return SpeechBrainUpstream(hp["encoder"], feats, hp.get("normalize"), win)


def load_upstream(path: str, device: str = "cpu", arch: dict | None = None,
                  whisper_window: str | None = None) -> tuple[nn.Module, WaveformInput]:
    """``(upstream in eval mode, its waveform front end)`` from a local folder or checkpoint file (see
    module doc); ``arch``: a torchaudio checkpoint's resolved architecture (default: from its file name);
    ``whisper_window``: a Whisper's windows, ``30s`` (default) or ``utterance`` (:class:`HFUpstream`)."""
    kind = upstream_kind(path)
    whisper_window = whisper_window or "30s"
    if kind == "hf":
        model = load_hf(path, whisper_window)
    elif kind == "speechbrain":
        model = load_speechbrain(path)
    elif kind == "openai-whisper":
        model = HFUpstream(load_openai_whisper(path), "whisper", whisper_window)
    else:
        arch = arch or resolve_arch(path, None)
        model = TorchaudioUpstream(build_torchaudio(path, arch), arch)
    return model.to(device).eval(), WaveformInput(model.win).to(device)


def describe_upstream(name: str, path: str, device: str = "cpu", probe_seconds: float = 2.0, seed: int = 0,
                      arch: dict | None = None, whisper_window: str = "30s") -> dict:
    """Load an upstream, run it on ``probe_seconds`` of noise and describe it: format (kind), layers,
    dimensions, frame rate (nominal and measured), parameters, digest (a Whisper read in ``utterance``
    windows: with the window, since its layers differ from the padded ones); :class:`ManifestError` if
    its outputs are not finite or their frame counts disagree with the frame rate."""
    kind = upstream_kind(path)
    if whisper_window not in HFUpstream.WHISPER_WINDOWS:
        raise ManifestError(f"whisper_window: {whisper_window!r} is not a Whisper window; choose one of "
                            f"{', '.join(HFUpstream.WHISPER_WINDOWS)}")
    model, features = load_upstream(path, device, arch, whisper_window)
    window = model.whisper_window if getattr(model, "whisper", False) else None
    arch = getattr(model, "arch", None)  # a torchaudio checkpoint's, resolved by its file name when not given
    samples = int(probe_seconds * SAMPLE_RATE)
    wav = torch.randn(1, samples, generator=torch.Generator().manual_seed(seed)).to(device) * 0.1
    out = model.forward_layers(wav, torch.tensor([samples], device=device), model.layer_names)
    for layer, (hidden, frames) in out.items():
        if not torch.isfinite(hidden).all():
            raise ManifestError(f"{path}: layer {layer} gives non-finite values on a noise probe")
    measured = int(out[model.layer_names[-1]][1][0]) / probe_seconds
    nominal = float(model.frame_rate)
    if kind != "speechbrain" and abs(measured - nominal) > nominal / probe_seconds + 1:
        raise ManifestError(f"{path}: {measured:.1f} frames per second measured, {nominal:.1f} expected")
    return {"name": name, "source": os.path.abspath(path), "kind": kind,
            "model_type": getattr(model, "model_type", "speechbrain"),
            "arch": arch, "layers": model.layer_names,
            "n_layers": len(model.layer_names) - 1, "dims": model.layer_sizes,
            "frame_rate_hz": round(nominal, 3), "measured_frame_rate_hz": round(measured, 3),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "min_samples": int(features.win), "whisper_window": window,
            "sha1": upstream_digest(path, arch, None if window == "30s" else window), "device": device}
