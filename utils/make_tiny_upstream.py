#!/usr/bin/env python3
"""Write a tiny randomly initialised upstream model folder (for the demo and the tests; no download).

Usage: ``python utils/make_tiny_upstream.py --kind wavlm --out DIR [--layers 2] [--hidden 32] [--seed 0]
[--format folder|openai-whisper|torchaudio]``

Kinds: ``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec-audio``, ``whisper`` (a transformers folder
written with ``save_pretrained``) and ``speechbrain`` (``hyperparams.yaml`` + ``encoder.ckpt``).
The transformers models use ``feat_extract_norm="layer"`` (the wav2vec2-large-lv60 style, which
takes an attention mask, so padded batches are exact); ``--group-norm`` writes the wav2vec2-base
style instead, which :class:`ser_modules.upstreams.encoders.HFUpstream` runs one utterance at a time.

``--format openai-whisper`` (kind whisper) writes ``OUT`` as openai-whisper saves its models
(``{"dims", "model_state_dict"}``, decoder included) from :class:`OpenAIWhisper`, a re-statement of
openai-whisper's architecture with its module names; ``--format torchaudio`` (kinds wav2vec2, hubert,
wavlm) writes the state dict of ``torchaudio.models.wav2vec2_model`` / ``wavlm_model`` to ``OUT`` (a
``.pth``) and its parameters to ``OUT`` with ``.json`` (for ``--upstream-arch``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper", "speechbrain")
FORMATS = ("folder", "openai-whisper", "torchaudio")

# A small conv feature extractor: 3 layers, hop 320 samples (50 Hz frames, as the real ones), 165-sample receptive field.
CONV = {"conv_dim": (32, 32, 32), "conv_kernel": (10, 8, 4), "conv_stride": (5, 8, 8)}

SPEECHBRAIN_YAML = """# A tiny SpeechBrain encoder (utils/make_tiny_upstream.py): 20 log-mel bins, two linear+ReLU blocks.
n_mels: 20
hidden: {hidden}
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
encoder: !new:speechbrain.nnet.containers.Sequential
    input_shape: [null, null, !ref <n_mels>]
{blocks}
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
"""


def hf_config(kind: str, layers: int, hidden: int, group_norm: bool):
    import transformers

    common = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
              "intermediate_size": 2 * hidden, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
              "vocab_size": 32, **CONV}
    if kind == "whisper":
        return transformers.WhisperConfig(d_model=hidden, encoder_layers=layers, decoder_layers=1,
                                          encoder_attention_heads=2, decoder_attention_heads=2,
                                          encoder_ffn_dim=2 * hidden, decoder_ffn_dim=2 * hidden, num_mel_bins=80,
                                          max_source_positions=1500, max_target_positions=32, vocab_size=64,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    if kind == "data2vec-audio":  # always layer-normalised per frame
        return transformers.Data2VecAudioConfig(**{**common, "num_conv_pos_embeddings": 5, "conv_pos_kernel_size": 16})
    norm = {"feat_extract_norm": "group", "do_stable_layer_norm": False} if group_norm else \
        {"feat_extract_norm": "layer", "do_stable_layer_norm": True}
    cls = {"wav2vec2": transformers.Wav2Vec2Config, "hubert": transformers.HubertConfig,
           "wavlm": transformers.WavLMConfig}[kind]
    extra = {"num_buckets": 32, "max_bucket_distance": 100} if kind == "wavlm" else {}
    return cls(**common, **norm, **extra)


def make_hf(kind: str, out: str, layers: int, hidden: int, seed: int, group_norm: bool = False) -> str:
    import transformers

    torch.manual_seed(seed)
    config = hf_config(kind, layers, hidden, group_norm)
    model = transformers.AutoModel.from_config(config)  # Whisper: the whole model, as real folders hold it
    model.save_pretrained(out)
    return out


def make_speechbrain(out: str, layers: int, hidden: int, seed: int) -> str:
    from hyperpyyaml import load_hyperpyyaml

    blocks = "".join(f"    linear{k}: !name:speechbrain.nnet.linear.Linear\n        n_neurons: !ref <hidden>\n"
                     f"    act{k}: !new:torch.nn.ReLU\n" for k in range(1, layers + 1))
    text = SPEECHBRAIN_YAML.format(hidden=hidden, blocks=blocks)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    hp = load_hyperpyyaml(text)
    with open(os.path.join(out, "hyperparams.yaml"), "w", encoding="utf-8") as f:
        f.write(text)
    torch.save(hp["encoder"].state_dict(), os.path.join(out, "encoder.ckpt"))
    return out


class OpenAIWhisper(torch.nn.Module):
    """openai-whisper's ``Whisper`` (whisper/model.py) re-stated with its module names: the audio encoder
    (two GELU convolutions, sinusoidal positions, pre-norm residual attention blocks, ``ln_post``) and a text
    decoder whose keys a checkpoint holds. ``encoder_states(mel)`` gives the input of block 1, each block's
    output and the last one after ``ln_post``: the reference of the upstream's layer taps."""

    def __init__(self, dims: dict):
        super().__init__()
        nn = torch.nn
        n_state, n_head = dims["n_audio_state"], dims["n_audio_head"]

        class Block(nn.Module):
            def __init__(self, cross: bool):
                super().__init__()
                self.n_head = n_head
                self.attn = nn.ModuleDict({"query": nn.Linear(n_state, n_state), "key": nn.Linear(n_state, n_state, bias=False),
                                           "value": nn.Linear(n_state, n_state), "out": nn.Linear(n_state, n_state)})
                self.attn_ln = nn.LayerNorm(n_state)
                if cross:
                    self.cross_attn = nn.ModuleDict({"query": nn.Linear(n_state, n_state),
                                                     "key": nn.Linear(n_state, n_state, bias=False),
                                                     "value": nn.Linear(n_state, n_state), "out": nn.Linear(n_state, n_state)})
                    self.cross_attn_ln = nn.LayerNorm(n_state)
                self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
                self.mlp_ln = nn.LayerNorm(n_state)

            def forward(self, x):
                h = self.attn_ln(x)
                b, t, d = h.shape
                heads = [self.attn[n](h).view(b, t, self.n_head, -1).transpose(1, 2) for n in ("query", "key", "value")]
                scale = (d // self.n_head) ** -0.25  # openai-whisper scales q and k each
                att = ((heads[0] * scale) @ (heads[1] * scale).transpose(-1, -2)).softmax(-1) @ heads[2]
                x = x + self.attn["out"](att.transpose(1, 2).reshape(b, t, d))
                return x + self.mlp(self.mlp_ln(x))

        self.encoder = nn.Module()
        self.encoder.conv1 = nn.Conv1d(dims["n_mels"], n_state, 3, padding=1)
        self.encoder.conv2 = nn.Conv1d(n_state, n_state, 3, stride=2, padding=1)
        self.encoder.register_buffer("positional_embedding", sinusoids(dims["n_audio_ctx"], n_state))
        self.encoder.blocks = nn.ModuleList([Block(False) for _ in range(dims["n_audio_layer"])])
        self.encoder.ln_post = nn.LayerNorm(n_state)
        self.decoder = nn.Module()
        self.decoder.token_embedding = nn.Embedding(dims["n_vocab"], dims["n_text_state"])
        self.decoder.positional_embedding = nn.Parameter(torch.randn(dims["n_text_ctx"], dims["n_text_state"]) * 0.01)
        self.decoder.blocks = nn.ModuleList([Block(True) for _ in range(dims["n_text_layer"])])
        self.decoder.ln = nn.LayerNorm(dims["n_text_state"])

    def encoder_states(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """``mel [B, n_mels, 2 * n_audio_ctx]`` -> ``n_audio_layer + 1`` states ``[B, n_audio_ctx, n_state]``."""
        enc = self.encoder
        x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(mel))))
        states = [x.permute(0, 2, 1) + enc.positional_embedding]
        for block in enc.blocks:
            states.append(block(states[-1]))
        states[-1] = enc.ln_post(states[-1])
        return states


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """openai-whisper's positional embedding of the audio encoder."""
    import math

    increment = math.log(max_timescale) / (channels // 2 - 1)
    scaled = torch.arange(length)[:, None] * torch.exp(-increment * torch.arange(channels // 2))[None]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def whisper_dims(layers: int, hidden: int) -> dict:
    return {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": hidden, "n_audio_head": 2, "n_audio_layer": layers,
            "n_vocab": 64, "n_text_ctx": 32, "n_text_state": hidden, "n_text_head": 2, "n_text_layer": 1}


def make_openai_whisper(out: str, layers: int, hidden: int, seed: int) -> str:
    torch.manual_seed(seed)
    dims = whisper_dims(layers, hidden)
    model = OpenAIWhisper(dims)
    torch.save({"dims": dims, "model_state_dict": model.state_dict()}, out)
    return out


def torchaudio_params(kind: str, layers: int, hidden: int, group_norm: bool) -> dict:
    """``wav2vec2_model`` (``wavlm_model`` for wavlm) parameters of a tiny model with the conv stack of ``CONV``."""
    params = {"extractor_mode": "group_norm" if group_norm else "layer_norm",
              "extractor_conv_layer_config": [list(c) for c in zip(CONV["conv_dim"], CONV["conv_kernel"], CONV["conv_stride"])],
              "extractor_conv_bias": not group_norm, "encoder_embed_dim": hidden, "encoder_projection_dropout": 0.1,
              "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 2, "encoder_num_layers": layers,
              "encoder_num_heads": 2, "encoder_attention_dropout": 0.1, "encoder_ff_interm_features": 2 * hidden,
              "encoder_ff_interm_dropout": 0.0, "encoder_dropout": 0.1, "encoder_layer_norm_first": not group_norm,
              "encoder_layer_drop": 0.05, "aux_num_out": None}
    if kind == "wavlm":
        params.update({"encoder_num_buckets": 32, "encoder_max_distance": 100})
    return params


def make_torchaudio(kind: str, out: str, layers: int, hidden: int, seed: int, group_norm: bool) -> str:
    import json

    from torchaudio.models import wav2vec2_model, wavlm_model

    torch.manual_seed(seed)
    params = torchaudio_params(kind, layers, hidden, group_norm)
    model = (wavlm_model if kind == "wavlm" else wav2vec2_model)(**params)
    torch.save(model.state_dict(), out)
    with open(os.path.splitext(out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(params, f, indent=2)
    return out


def make_tiny_upstream(kind: str, out: str, layers: int = 2, hidden: int = 32, seed: int = 0,
                       group_norm: bool = False, fmt: str = "folder") -> str:
    """Write the folder (or checkpoint file, ``fmt``) ``out`` and return it."""
    if fmt == "openai-whisper":
        if kind != "whisper":
            raise ValueError("--format openai-whisper writes a whisper model (--kind whisper)")
        return make_openai_whisper(out, layers, hidden, seed)
    if fmt == "torchaudio":
        if kind not in ("wav2vec2", "hubert", "wavlm"):
            raise ValueError("--format torchaudio writes wav2vec2, hubert or wavlm models")
        return make_torchaudio(kind, out, layers, hidden, seed, group_norm)
    if kind == "speechbrain":
        return make_speechbrain(out, layers, hidden, seed)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return make_hf(kind, out, layers, hidden, seed, group_norm)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-norm", action="store_true", help="wav2vec2-base style feature encoder (no mask)")
    parser.add_argument("--format", default="folder", choices=FORMATS,
                        help="folder (transformers/SpeechBrain), openai-whisper (.pt) or torchaudio (.pth + .json)")
    args = parser.parse_args(argv)
    out = make_tiny_upstream(args.kind, args.out, args.layers, args.hidden, args.seed, args.group_norm, args.format)
    print(f"{args.kind} upstream ({args.layers} layers of {args.hidden}) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
