"""Stage 2: pretrain the recipe's ASR model (conf/asr.yaml) on the ASR corpus, then score it.

Resumes from the last checkpoint after an interruption (``ckpt_interval_minutes`` also checkpoints
inside an epoch, and a resumed run continues at the next batch); a finished run (``done.json`` with
the same configuration) is skipped; a changed training configuration or ASR corpus trains afresh in a
work folder that replaces the old run only when complete (an unfinished run of another configuration
is moved aside, never deleted), a change of evaluation-only keys (decoders, beam size, loader workers,
checkpoint interval) re-scores the trained model, and raising ``n_epochs`` or ``patience`` continues
the same run. Writes ``<exp>/asr/``: ``save/`` (best-by-CER and latest checkpoints), ``hyperparams.yaml``,
``train_log.txt``, ``wer_<split>_<decoder>.txt`` and rows of ``<exp>/asr_results.csv``.
"""

from __future__ import annotations

import hashlib
import os
import time

import speechbrain as sb

from ser_modules.asr.evaluation import score_pretrained, update_asr_results
from ser_modules.asr.saved_models import export_model, model_blocks
from ser_modules.asr.training import fit_asr, load_best, run_options
from ser_modules.stages.common import stage_runner, start_stage
from ser_modules.utils.curves import curves_dir
from ser_modules.utils.fileio import StagedOutputs, file_digest, read_json, run_main, write_json, write_text
from ser_modules.utils.hparams import canonical_config, load_stage_hparams

# Keys that do not change what training computes: a change there resumes the run and re-scores.
EVAL_ONLY_KEYS = ("decoders", "beam_size", "decode_ctc_weight", "eval_batch_size", "num_workers",
                  "ckpt_interval_minutes", "ckpt_interval_steps", "nonfinite_patience", "curves_every_steps")
# Keys that only say how long training goes on: raising them continues the same run.
RESUMABLE_KEYS = ("n_epochs", "patience", "epoch_counter")


def main(argv=None) -> None:
    args, log, out, hparams, resolved = start_stage(__doc__, "stage2_asr", "asr", argv, "asr", data="asr")
    # The run is identified by its configuration and its data.
    data_digest = file_digest(hparams["train_csv"], hparams["valid_csv"], hparams["test_csv"])
    # what is drawn is not what is computed: the curves' key never reopens a finished stage 2
    config_hash = hashlib.sha1((canonical_config(resolved, args.exp_dir, drop=("curves_every_steps",)) + data_digest)
                               .encode()).hexdigest()[:16]
    # Evaluation-only keys and the epoch limits do not invalidate the training: a change there resumes it.
    training = canonical_config(resolved, args.exp_dir, drop=EVAL_ONLY_KEYS + RESUMABLE_KEYS)
    training_hash = hashlib.sha1((training + data_digest).encode()).hexdigest()[:16]
    done_path = os.path.join(out, "done.json")
    if os.path.isfile(done_path) and read_json(done_path).get("config") == config_hash:
        log.info("stage 2 already finished with this configuration (%s): skipped", done_path)
        return
    # Checkpoints of another training configuration or other data must not be resumed: that training
    # runs in a work folder, and replaces the finished run only when it is complete.
    staged = StagedOutputs(out, {"config": training_hash})
    work = out if staged.done else staged.begin()
    if work != out:
        if os.path.isdir(out):
            log.warning("stage 2 trains in %s (training configuration %s); the older run in %s stays until this one "
                        "is complete", work, training_hash, out)
        hparams, _ = load_stage_hparams(args.conf_dir, "asr", args.size, stage_runner(args, work, "asr"), args.overrides)
        os.makedirs(hparams["checkpointer"].checkpoints_dir, exist_ok=True)
    if hparams["checkpointer"].list_checkpoints():
        log.info("stage 2 resumes from the latest checkpoint in %s", hparams["checkpointer"].checkpoints_dir)
    # one curves folder per training configuration: TensorBoard shows runs of different configurations side by side
    hparams["curves_dir"] = curves_dir(args.exp_dir, "stage2", hparams["model_name"], training_hash)
    write_text(os.path.join(work, "hyperparams.yaml"), resolved)
    model_yaml = os.path.join(work, "model_hparams.yaml")
    write_text(model_yaml, model_blocks(resolved))

    started = time.time()
    run_opts = run_options(args.device, args.precision)
    brain = fit_asr(hparams, run_opts)
    train_seconds = time.time() - started
    if not sb.utils.distributed.if_main_process():
        return
    ckpt = load_best(hparams["checkpointer"])
    ckpt = os.path.relpath(ckpt, work) if ckpt else None  # relative: the experiment may move
    model = hparams["model"].to(args.device)
    features = hparams["features"].to(args.device)
    export_model(model, work, model_yaml, extra={"checkpoint": ckpt, "model_name": hparams["model_name"]})
    corpus = "+".join(sorted(read_json(os.path.join(args.data_dir, "asr", "summary.json"))["corpora"]))
    rows, summary = score_pretrained(hparams, model, features, args.device, work, corpus, ckpt)
    update_asr_results(os.path.join(args.exp_dir, "asr_results.csv"), rows,
                       scope={"model": hparams["model_name"], "stage": "pretrained", "corpus": corpus})
    write_json(os.path.join(work, "done.json"), {"config": config_hash, "results": summary, "checkpoint": ckpt,
                                                 "train_minutes": round(train_seconds / 60, 2),
                                                 "epochs": brain.hparams.epoch_counter.current})
    if work != out:
        staged.publish()
    for split, res in summary.items():
        for method, r in res.items():
            print(f"stage 2 {hparams['model_name']} {split} ({method}): CER {r['CER']:.2f}%  WER {r['WER']:.2f}%")
    log.info("stage 2 finished in %.1f min (training %.1f min)", (time.time() - started) / 60, train_seconds / 60)


if __name__ == "__main__":
    run_main(main, "stage2_asr")
