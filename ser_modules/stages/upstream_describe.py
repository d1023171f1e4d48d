"""Stage 2 of upstream_probe: verify and describe each pretrained upstream (``--upstream PATH``, repeatable).

Nothing is trained: each folder or checkpoint file (an openai-whisper ``.pt``, a torchaudio ``.pth`` with
its ``--upstream-arch`` if its file name is not a bundle's) is loaded from local files (:mod:`ser_modules.upstreams.loading`), run once on
a noise probe (``probe_seconds`` of conf/asr.yaml) and described: kind, layers ``layer0..N``,
dimensions, frame rate, parameters, weight digest (a torchaudio checkpoint: and its architecture). Writes ``<exp>/asr/upstreams.json`` (the list
stages 4-6 read) and ``<exp>/asr/<name>/model.json`` (what :func:`ser_modules.asr.saved_models.load_asr_model`
rebuilds it from). A folder that is not an upstream stops the stage with one line naming what is missing.
"""

from __future__ import annotations

import os

from ser_modules.stages.common import stage_parser, start_stage
from ser_modules.upstreams.cli import add_upstream_arguments
from ser_modules.upstreams.formats import upstream_arch, upstream_name
from ser_modules.upstreams.loading import describe_upstream
from ser_modules.utils.fileio import ManifestError, run_main, write_json, write_text


def main(argv=None) -> None:
    parser = stage_parser(__doc__.split("\n\n")[0])
    add_upstream_arguments(parser)
    args, log, _, hp, resolved = start_stage(parser, "stage2_upstream", "asr", argv)  # runner values: the seed only
    out = os.path.join(args.exp_dir, "asr")
    if not args.upstream:
        raise ManifestError(f"{args.conf_dir}: stage 2 of upstream_probe needs --upstream PATH (a transformers or "
                            "SpeechBrain model folder, or an openai-whisper / torchaudio checkpoint; "
                            "utils/make_tiny_upstream.py writes a tiny one)")
    described, names = [], set()
    for path, arch in args.upstream:
        name = upstream_name(path, names)
        names.add(name)
        info = describe_upstream(name, path, args.device, hp["probe_seconds"], args.seed, upstream_arch(path, arch)[1],
                                 hp.get("whisper_window", "30s"))
        described.append(info)
        bundle = f", bundle {info['arch']['bundle']}" if info["arch"] and info["arch"]["bundle"] else ""
        print(f"stage 2 upstream {name}: {info['model_type']} ({info['kind']}{bundle}), {info['n_layers']} layers + input "
              f"(layer0..layer{len(info['layers']) - 1}) of {info['dims'][info['layers'][-1]]} dims, "
              f"{info['frame_rate_hz']:g} frames/s, {info['parameters'] / 1e6:.2f} M parameters")
    write_text(os.path.join(out, "hyperparams.yaml"), resolved)
    for info in described:  # what load_asr_model rebuilds the upstream from
        write_json(os.path.join(out, info["name"], "model.json"),
                   {"upstream": {"source": info["source"], "kind": info["kind"], "arch": info["arch"],
                                 "whisper_window": info["whisper_window"]}, "sha1": info["sha1"],
                    "model_name": info["name"]})
    write_json(os.path.join(out, "upstreams.json"), {"upstreams": described})
    log.info("stage 2: %d upstream(s) described in %s", len(described), os.path.join(out, "upstreams.json"))


if __name__ == "__main__":
    run_main(main, "stage2_upstream")
