#!/usr/bin/env python3
"""Write a tiny randomly initialised upstream model folder (for the demo and the tests; no download).

Usage: ``python utils/make_tiny_upstream.py --kind wavlm --out DIR [--layers 2] [--hidden 32] [--seed 0]``

Kinds: ``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec-audio``, ``whisper`` (a transformers folder
written with ``save_pretrained``) and ``speechbrain`` (``hyperparams.yaml`` + ``encoder.ckpt``).
The transformers models use ``feat_extract_norm="layer"`` (the wav2vec2-large-lv60 style, which
takes an attention mask, so padded batches are exact); ``--group-norm`` writes the wav2vec2-base
style instead, which :class:`ser_modules.upstream.HFUpstream` runs one utterance at a time.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper", "speechbrain")

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


def make_tiny_upstream(kind: str, out: str, layers: int = 2, hidden: int = 32, seed: int = 0,
                       group_norm: bool = False) -> str:
    """Write the folder ``out`` and return it."""
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
    args = parser.parse_args(argv)
    out = make_tiny_upstream(args.kind, args.out, args.layers, args.hidden, args.seed, args.group_norm)
    print(f"{args.kind} upstream ({args.layers} layers of {args.hidden}) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
