"""Upstream checkpoints as users hold them, read into models without their packages' loaders.

- an ``openai-whisper`` checkpoint (``~/.cache/whisper/base.pt``: a dict of ``dims`` and
  ``model_state_dict``): its encoder becomes transformers' ``WhisperEncoder`` with the checkpoint's
  dimensions, the weights mapped by name (:data:`OPENAI_WHISPER_NAMES`), the decoder's ignored; no
  ``openai-whisper`` import. fp16 checkpoints load into float32, as ``whisper.load_model`` does.
- a torchaudio pipeline checkpoint (``~/.cache/torch/hub/checkpoints/wavlm_base_plus.pth``: a state dict
  of ``torchaudio.models.Wav2Vec2Model``): the architecture is that of the ``torchaudio.pipelines``
  bundle whose file it is (:func:`bundle_table`), or named (``--upstream-arch WAVLM_BASE_PLUS``), or a
  JSON file of ``wav2vec2_model`` / ``wavlm_model`` parameters; built with torchaudio's own builders.

Every key the model needs must be present and no unknown key may be left over: one line names the first.
"""

from __future__ import annotations

import json
import os
import re

import torch

from ser_modules.utils.fileio import ManifestError

# openai-whisper's encoder names (whisper/model.py: AudioEncoder) -> transformers' WhisperEncoder names
OPENAI_WHISPER_NAMES = (
    (r"positional_embedding", "embed_positions.weight"),
    (r"conv([12])\.(weight|bias)", r"conv\1.\2"),
    (r"blocks\.(\d+)\.attn\.query\.(weight|bias)", r"layers.\1.self_attn.q_proj.\2"),
    (r"blocks\.(\d+)\.attn\.key\.weight", r"layers.\1.self_attn.k_proj.weight"),  # the key has no bias
    (r"blocks\.(\d+)\.attn\.value\.(weight|bias)", r"layers.\1.self_attn.v_proj.\2"),
    (r"blocks\.(\d+)\.attn\.out\.(weight|bias)", r"layers.\1.self_attn.out_proj.\2"),
    (r"blocks\.(\d+)\.attn_ln\.(weight|bias)", r"layers.\1.self_attn_layer_norm.\2"),
    (r"blocks\.(\d+)\.mlp\.0\.(weight|bias)", r"layers.\1.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.2\.(weight|bias)", r"layers.\1.fc2.\2"),
    (r"blocks\.(\d+)\.mlp_ln\.(weight|bias)", r"layers.\1.final_layer_norm.\2"),
    (r"ln_post\.(weight|bias)", r"layer_norm.\1"),
)
OPENAI_WHISPER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                       "n_vocab", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")
OPENAI_WHISPER_IGNORED = ("decoder.", "alignment_heads")  # the text decoder; the timestamp heads buffer
TORCHAUDIO_TYPES = {"Wav2Vec2": "wav2vec2", "WavLM": "wavlm"}  # torchaudio's _model_type -> builder name
TORCHAUDIO_IGNORED = ("aux.",)  # an ASR bundle's CTC head: not part of the upstream


def first_keys(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def read_checkpoint(path: str):
    """The object in a ``torch.save`` file, memory-mapped when it is a zip archive (no copy of the weights
    until used); a legacy (pre-zip) file is read whole."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle's and zipfile's own errors: one line naming the file
        raise ManifestError(f"{path}: cannot read the checkpoint ({str(err).splitlines()[0]})") from err


def checkpoint_kind(path: str) -> str:
    """``"openai-whisper"`` (a dict with ``dims`` and ``model_state_dict``) or ``"torchaudio"`` (a flat
    state dict of tensors); :class:`ManifestError` for anything else."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and "dims" in obj and "model_state_dict" in obj:
        return "openai-whisper"
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return "torchaudio"
    raise ManifestError(f"{path}: neither an openai-whisper checkpoint (dims + model_state_dict) nor a torchaudio "
                        "state dict")


# ---- openai-whisper -------------------------------------------------------------------------------


def whisper_config_from_dims(path: str, dims: dict):
    """transformers' ``WhisperConfig`` of an openai-whisper ``dims`` (its ``ModelDimensions`` as a dict)."""
    from transformers import WhisperConfig

    missing = [k for k in OPENAI_WHISPER_DIMS if k not in dims]
    if missing:
        raise ManifestError(f"{path}: the checkpoint's dims lack {first_keys(missing)}")
    try:
        d = {k: int(dims[k]) for k in OPENAI_WHISPER_DIMS}
    except (TypeError, ValueError) as err:
        raise ManifestError(f"{path}: the checkpoint's dims are not integers ({err})") from err
    return WhisperConfig(vocab_size=d["n_vocab"], num_mel_bins=d["n_mels"], max_source_positions=d["n_audio_ctx"],
                         d_model=d["n_audio_state"], encoder_attention_heads=d["n_audio_head"],
                         encoder_layers=d["n_audio_layer"], encoder_ffn_dim=4 * d["n_audio_state"],
                         max_target_positions=d["n_text_ctx"], decoder_attention_heads=d["n_text_head"],
                         decoder_layers=d["n_text_layer"], decoder_ffn_dim=4 * d["n_text_state"],
                         # the decoder's special tokens (unused by the encoder) kept inside a small vocabulary
                         **{k: min(v, d["n_vocab"] - 1) for k, v in (("pad_token_id", 50256), ("bos_token_id", 50256),
                                                                     ("eos_token_id", 50256), ("decoder_start_token_id", 50257))})


def openai_whisper_encoder_state(path: str, state: dict) -> dict:
    """The encoder's entries of an openai-whisper ``model_state_dict``, named as transformers names them;
    the decoder's ignored, any other key an error naming it."""
    out, unexpected = {}, []
    for key, value in state.items():
        if key.startswith(OPENAI_WHISPER_IGNORED):
            continue
        name = key[len("encoder."):] if key.startswith("encoder.") else None
        target = next((re.sub(f"^{p}$", r, name) for p, r in OPENAI_WHISPER_NAMES if name and re.fullmatch(p, name)), None)
        if target is None:
            unexpected.append(key)
        else:
            out[target] = value
    if unexpected:
        raise ManifestError(f"{path}: {len(unexpected)} unexpected key(s) in the openai-whisper checkpoint (neither "
                            f"its encoder's nor its decoder's): {first_keys(unexpected)}")
    return out


def load_whisper_state(path: str, config, state: dict, dtype=torch.float32):
    """transformers' ``WhisperEncoder`` of ``config`` holding ``state`` (its own names): every key used,
    none missing, shapes as the config says; one line naming the file otherwise."""
    encoder = meta_whisper_encoder(path, config, state)
    encoder = encoder.to_empty(device="cpu").to(dtype)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:  # shapes that disagree with the configuration
        raise ManifestError(f"{path}: the Whisper encoder's weights do not fit its configuration "
                            f"({str(err).splitlines()[-1].strip()})") from err
    return encoder


def meta_whisper_encoder(path: str, config, state: dict):
    """transformers' ``WhisperEncoder`` of ``config`` on the meta device (no memory, no initialisation),
    after checking that ``state`` holds every key it needs (one line naming the missing ones)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    missing = [k for k in encoder.state_dict() if k not in state]
    if missing:
        raise ManifestError(f"{path}: the Whisper encoder's weights lack {len(missing)} key(s): {first_keys(missing)}")
    return encoder


def openai_whisper_parts(path: str) -> tuple:
    """``(WhisperConfig, encoder state dict in transformers' names)`` of an openai-whisper checkpoint file."""
    ckpt = read_checkpoint(path)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("dims"), dict) and isinstance(ckpt.get("model_state_dict"), dict)):
        raise ManifestError(f"{path}: not an openai-whisper checkpoint (a dict of dims and model_state_dict)")
    return whisper_config_from_dims(path, ckpt["dims"]), openai_whisper_encoder_state(path, ckpt["model_state_dict"])


def check_openai_whisper(path: str) -> None:
    """Every key of the encoder present and none unknown, without loading a weight (meta device)."""
    meta_whisper_encoder(path, *openai_whisper_parts(path))


def load_openai_whisper(path: str):
    """transformers' ``WhisperEncoder`` (float32) from an openai-whisper checkpoint file."""
    return load_whisper_state(path, *openai_whisper_parts(path))


# ---- torchaudio -----------------------------------------------------------------------------------


def bundle_table() -> dict[str, str]:
    """``{checkpoint file name: bundle name}`` of every wav2vec 2.0 / HuBERT / WavLM bundle of
    ``torchaudio.pipelines`` (read from torchaudio itself, so the table follows the installed version)."""
    import torchaudio.pipelines as pipelines

    table = {}
    for name in sorted(dir(pipelines)):
        bundle = getattr(pipelines, name)
        if isinstance(bundle, pipelines.Wav2Vec2Bundle) and type(bundle).__name__ != "Wav2Vec2FABundle":
            table[os.path.basename(bundle._path)] = name
    return table


def bundle_arch(name: str) -> dict:
    """The architecture of the bundle ``name`` (``WAVLM_BASE_PLUS``): builder, parameters (without an ASR
    bundle's CTC head), input normalisation, model family."""
    import torchaudio.pipelines as pipelines

    bundle = getattr(pipelines, name, None)
    if name not in bundle_table().values() or bundle is None:
        raise ManifestError(f"--upstream-arch {name}: not a wav2vec 2.0 / HuBERT / WavLM bundle of torchaudio.pipelines "
                            f"(e.g. {', '.join(sorted(bundle_table().values())[:4])}, ...)")
    family = "hubert" if name.startswith("HUBERT") else "wavlm" if name.startswith("WAVLM") else "wav2vec2"
    return {"bundle": name, "builder": TORCHAUDIO_TYPES[bundle._model_type], "family": family,
            "params": {**bundle._params, "aux_num_out": None}, "normalize_waveform": bool(bundle._normalize_waveform)}


def arch_from_json(file: str) -> dict:
    """A custom architecture: a JSON file of ``wav2vec2_model`` (or ``wavlm_model``: it has
    ``encoder_num_buckets``) parameters, or ``{"params": {...}, "normalize_waveform": bool,
    "family": "wav2vec2" | "hubert" | "wavlm"}``."""
    try:
        with open(file, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"{file}: cannot read the architecture JSON ({err})") from err
    params = spec.get("params", spec) if isinstance(spec, dict) else None
    if not isinstance(params, dict):
        raise ManifestError(f"{file}: the architecture JSON must be an object of wav2vec2_model parameters")
    family = spec.get("family") if "params" in spec else None
    builder = "wavlm" if "encoder_num_buckets" in params or family == "wavlm" else "wav2vec2"
    return {"bundle": None, "builder": builder, "family": family or builder,
            "params": {**params, "aux_num_out": None}, "normalize_waveform": bool(spec.get("normalize_waveform", False))}


def resolve_arch(path: str, arch: str | None) -> dict:
    """The architecture of the torchaudio checkpoint ``path``: ``arch`` (a bundle name or a JSON file),
    else the bundle whose file name it has; :class:`ManifestError` saying how to name it otherwise."""
    if arch:
        return arch_from_json(arch) if arch.endswith(".json") or os.path.isfile(arch) else bundle_arch(arch)
    bundle = bundle_table().get(os.path.basename(path))
    if bundle is None:
        raise ManifestError(f"{path}: not the file name of a torchaudio.pipelines bundle; name its architecture with "
                            "--upstream-arch BUNDLE (e.g. WAVLM_BASE_PLUS) or --upstream-arch PARAMS.json "
                            "(wav2vec2_model parameters)")
    return bundle_arch(bundle)


def torchaudio_model(path: str, arch: dict, device: str = "cpu"):
    """``wav2vec2_model`` / ``wavlm_model`` of ``arch`` (randomly initialised; ``device="meta"``: shapes only)."""
    from torchaudio.models import wav2vec2_model, wavlm_model

    builder = {"wav2vec2": wav2vec2_model, "wavlm": wavlm_model}[arch["builder"]]
    try:
        with torch.device(device):
            return builder(**arch["params"])
    except (TypeError, ValueError, AssertionError) as err:  # a parameter it does not take, lacks or refuses
        raise ManifestError(f"{path}: the architecture's parameters do not fit torchaudio's {builder.__name__} "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def check_torchaudio(path: str, arch: dict) -> None:
    """The checkpoint's keys against the architecture's, without loading a weight (meta device)."""
    torchaudio_state(path, arch, list(torchaudio_model(path, arch, "meta").state_dict()))


def torchaudio_state(path: str, arch: dict, keys: list[str]) -> dict:
    """The state dict in ``path`` (an ASR bundle's CTC head dropped), checked to hold exactly ``keys``."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "model_state_dict" in state:
        raise ManifestError(f"{path}: not a torchaudio state dict")
    state = {k: v for k, v in state.items() if not k.startswith(TORCHAUDIO_IGNORED)}
    known = set(keys)
    missing, unexpected = [k for k in keys if k not in state], [k for k in state if k not in known]
    if missing:
        raise ManifestError(f"{path}: {len(missing)} key(s) of the {arch['bundle'] or 'given'} architecture missing "
                            f"from the checkpoint: {first_keys(missing)}")
    if unexpected:
        raise ManifestError(f"{path}: {len(unexpected)} unexpected key(s) for the {arch['bundle'] or 'given'} "
                            f"architecture: {first_keys(unexpected)}")
    return state


def build_torchaudio(path: str, arch: dict):
    """``torchaudio.models.Wav2Vec2Model`` (float32, eval mode) of ``arch`` holding the state dict in ``path``."""
    model = torchaudio_model(path, arch)
    state = torchaudio_state(path, arch, list(model.state_dict()))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # shapes that disagree with the architecture
        raise ManifestError(f"{path}: the weights do not fit the {arch['bundle'] or 'given'} architecture "
                            f"({str(err).splitlines()[-1].strip()})") from err
    return model.float().eval()
