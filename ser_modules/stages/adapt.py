"""Stage 3: adapt the pretrained ASR model to the emotion corpus, per fold (conf/adapt.yaml).

For every variant of ``variants`` (``finetuned``: three-stage fine-tuning; ``structured``: SVD
factorised listener, then the same stages) and every fold, the model adapts on the fold's training
speakers and is exported to ``<exp>/adapt/<variant>/<fold>/model.pt``. WER/CER of the pretrained
and adapted models on the emotion corpus (each test utterance decoded by its own fold's model,
pooled over folds) go into ``<exp>/asr_results.csv``. With no variants (the Lakomkin 2018 recipe
keeps its ASR frozen) only the pretrained model is scored. Finished work is skipped on rerun.
"""

from __future__ import annotations

import os
import time

import pandas as pd
import speechbrain as sb

from ser_modules.adaptation import adaptation_splits, run_stage, write_splits
from ser_modules.asr_models import export_model, load_asr_model
from ser_modules.asr_training import error_rates, evaluate_asr, run_options, update_asr_results
from ser_modules.data import asr_dataset
from ser_modules.fileio import ManifestError, file_digest, fresh_outputs, read_json, read_manifest, write_json
from ser_modules.folds import load_folds
from ser_modules.hparams import load_stage_hparams
from ser_modules.models.lowrank import factorize_listener
from ser_modules.stages.common import parse_stage_args, stage_logging, stage_parser


def emotion_inputs(data_dir: str, protocol: str, scheme: str):
    """(utterances with transcripts, protocol manifest, folds) of the prepared emotion corpus."""
    emotion = os.path.join(data_dir, "emotion")
    manifest = read_manifest(os.path.join(emotion, protocol, "manifest.csv"), ("ID", "wav", "speaker", "emotion"))
    turns_path = os.path.join(emotion, "turns.csv")
    turns = read_manifest(turns_path) if os.path.isfile(turns_path) else manifest
    folds = load_folds(os.path.join(emotion, protocol, f"folds_{scheme}.json"))
    return turns, manifest, folds


def score_pooled(exp_dir: str, folder_of_fold: dict[str, str], method: str) -> dict:
    """WER/CER over all folds' test hypotheses (``hyp_test_<method>.csv`` in each fold folder)."""
    frames = [pd.read_csv(os.path.join(f, f"hyp_test_{method}.csv"), keep_default_na=False, dtype=str)
              for f in folder_of_fold.values()]
    pooled = pd.concat(frames, ignore_index=True)
    return error_rates(pooled["ID"].tolist(), pooled["reference"].tolist(), pooled["hypothesis"].tolist())


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__.split("\n\n")[0]), argv)
    log = stage_logging(args.exp_dir, "stage3_adapt")
    out = os.path.join(args.exp_dir, "adapt")
    hp, resolved = load_stage_hparams(args.conf_dir, "adapt", args.size, {"output_folder": out, "seed": args.seed},
                                      args.overrides)
    pretrained = os.path.join(args.exp_dir, "asr", "model.pt")
    if not os.path.isfile(pretrained):
        raise ManifestError(f"{pretrained}: no pretrained ASR model (run stage 2 first)")
    turns, manifest, folds = emotion_inputs(args.data_dir, args.protocol, args.folds)
    corpus = read_json(os.path.join(args.data_dir, "prepare_summary.json"))["emotion_corpus"]
    run_opts = run_options(args.device, args.precision)
    os.makedirs(out, exist_ok=True)
    started = time.time()

    # Every fold's adaptation data (and the test turns the pretrained model is scored on).
    data = {}
    for fold in folds:
        data[fold.name] = write_splits(adaptation_splits(turns, manifest, fold, hp["adapt_on"]),
                                       os.path.join(out, "data", fold.name))
    methods = hp["decoders"]
    rows = []

    # The pretrained model on every fold's test speakers.
    pre_dirs = {}
    pre_info = read_json(os.path.join(args.exp_dir, "asr", "model.json"))
    pre_sha = pre_info["sha1"]
    for fold in folds:
        folder = os.path.join(out, "pretrained", fold.name)
        pre_dirs[fold.name] = folder
        if not fresh_outputs(folder, {"model": pre_sha, "test": file_digest(data[fold.name]["test"]), "decoders": methods}):
            model, features, vocab, _ = load_asr_model(pretrained, args.device)
            evaluate_asr(model, features, asr_dataset(data[fold.name]["test"], vocab), vocab, args.device, folder,
                         "test", methods, hp["batch_size"])
    model_name = pre_info.get("model_name", "asr")
    for m in methods:
        rows.append({"model": model_name, "stage": "pretrained", "corpus": corpus, "split": f"test:{args.folds}",
                     "decoder": m, **score_pooled(args.exp_dir, pre_dirs, m), "checkpoint": "asr/model.pt"})

    asr_hparams = os.path.join(args.exp_dir, "asr", "model_hparams.yaml")
    for variant in hp["variants"]:
        rank = hp["structured_rank"] if variant == "structured" else None
        stage_dirs = {i: {} for i in range(len(hp["stages"]))}
        for fold in folds:
            fold_dir = os.path.join(out, variant, fold.name)
            final = os.path.join(fold_dir, "model.pt")
            fresh_outputs(fold_dir, {"model": pre_sha, "config": resolved, "variant": variant, "rank": rank,
                                     "data": file_digest(*data[fold.name].values())})
            model, features, vocab, _ = load_asr_model(pretrained, args.device)
            if rank:
                counts = factorize_listener(model, rank)
                log.info("%s: listener FC layers factorised at rank %d: %s", variant, rank, counts)
            if hasattr(model, "set_dropout"):
                model.set_dropout(hp["dropout"])
            fold_hp = {**hp, "vocab": vocab, "features": features}
            for i, (part, tf) in enumerate(zip(hp["stages"], hp["teacher_forcing"])):
                stage_dir = os.path.join(fold_dir, f"stage{i + 1}_{part}")
                stage_dirs[i][fold.name] = stage_dir
                if os.path.isfile(final) and i < len(hp["stages"]) - 1 and not hp["score_every_stage"]:
                    continue
                run_stage(model, fold_hp, part, tf, data[fold.name], stage_dir, run_opts, hp["brain_class"])
                if not sb.utils.distributed.if_main_process():
                    continue
                if (hp["score_every_stage"] or i == len(hp["stages"]) - 1) and not all(
                        os.path.isfile(os.path.join(stage_dir, f"hyp_test_{m}.csv")) for m in methods):
                    model.eval()
                    evaluate_asr(model, features, asr_dataset(data[fold.name]["test"], vocab), vocab, args.device,
                                 stage_dir, "test", methods, hp["batch_size"])
            if sb.utils.distributed.if_main_process() and not os.path.isfile(final):
                model.set_dropout(0.0) if hasattr(model, "set_dropout") else None
                export_model(model, fold_dir, asr_hparams, rank=rank,
                             extra={"variant": variant, "fold": fold.name, "stages": hp["stages"]})
        if not sb.utils.distributed.if_main_process():
            continue
        for i, part in enumerate(hp["stages"]):
            last = i == len(hp["stages"]) - 1
            if not (hp["score_every_stage"] or last):
                continue
            label = variant if last else f"{variant}:{'+'.join(hp['stages'][: i + 1])}"
            for m in methods:
                rows.append({"model": model_name, "stage": label, "corpus": corpus,
                             "split": f"test:{args.folds}", "decoder": m,
                             **score_pooled(args.exp_dir, stage_dirs[i], m),
                             "checkpoint": f"adapt/{variant}/<fold>/model.pt"})
    if sb.utils.distributed.if_main_process():
        update_asr_results(os.path.join(args.exp_dir, "asr_results.csv"), rows)
        for r in rows:
            print(f"stage 3 {r['model']} {r['stage']:<32} {r['corpus']} {r['split']} ({r['decoder']}): "
                  f"WER {r['WER']:.2f}%  CER {r['CER']:.2f}%")
        write_json(os.path.join(out, "summary.json"), {"rows": rows, "minutes": round((time.time() - started) / 60, 2)})
        log.info("stage 3 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    main()
