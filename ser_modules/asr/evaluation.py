"""ASR evaluation: WER and CER of a model on a split with each decoder, and the ``asr_results.csv``
table every stage adds its rows to.
"""

from __future__ import annotations

import logging
import os

import pandas as pd
import torch
from speechbrain.utils.metric_stats import ErrorRateStats
from tqdm import tqdm

from ser_modules.asr.brains import PAD_QUANTUM, append_error_stats, pad_to_multiple
from ser_modules.asr.decoding import Transcriber
from ser_modules.data.datasets import LengthBucketBatchSampler, absolute_lengths
from ser_modules.utils.fileio import atomic_path, write_csv

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Evaluation tables


ASR_RESULT_COLUMNS = ["model", "stage", "corpus", "split", "decoder", "WER", "CER", "utterances", "checkpoint"]


@torch.no_grad()
def evaluate_asr(model: torch.nn.Module, features: torch.nn.Module, dataset, vocab, device: str, out_dir: str,
                 tag: str, methods=("greedy",), batch_size: int = 16, beam_size: int = 10,
                 ctc_weight: float = 0.5, num_workers: int = 0) -> dict[str, dict]:
    """Transcribe ``dataset`` (an :func:`ser_modules.data.datasets.asr_dataset`) with each decoding method
    (``joint`` weights CTC by ``ctc_weight``); write per-utterance alignments ``wer_<tag>_<method>.txt``
    and return ``{method: {WER, CER, n}}``."""
    from ser_modules.data.datasets import dataset_durations, make_loader

    model.eval()
    transcriber = Transcriber(model, vocab, beam_size=beam_size, ctc_weight=ctc_weight)
    sampler = LengthBucketBatchSampler(dataset_durations(dataset), batch_size, shuffle=False)
    loader = make_loader(dataset, sampler, num_workers)
    results = {}
    for method in methods:
        ids, refs, hyps = [], [], []
        for batch in tqdm(loader, desc=f"decoding {tag} ({method})", leave=False):
            wavs, rel = batch.sig
            wavs = wavs.to(device)
            feats, frames = features(pad_to_multiple(wavs, PAD_QUANTUM), absolute_lengths(rel.to(device), wavs.shape[1]))
            hyps += transcriber(feats, frames, method)
            ids += batch.id
            refs += batch.transcript
        path = os.path.join(out_dir, f"wer_{tag}_{method}.txt")
        results[method] = error_rates(ids, refs, hyps, path)
        write_csv(os.path.join(out_dir, f"hyp_{tag}_{method}.csv"),
                  pd.DataFrame({"ID": ids, "reference": refs, "hypothesis": hyps}))
        logger.info("%s %s: WER %.2f CER %.2f (%d utterances) -> %s", tag, method, results[method]["WER"],
                    results[method]["CER"], len(ids), path)
    return results


def error_rates(ids: list[str], refs: list[str], hyps: list[str], alignments_path: str | None = None) -> dict:
    """WER and CER (percent) of hypotheses against references; optionally write the word alignments."""
    cer, wer = ErrorRateStats(), ErrorRateStats()
    append_error_stats(cer, wer, ids, hyps, refs)
    if alignments_path:
        with atomic_path(alignments_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            wer.write_stats(f)
    return {"WER": round(wer.summarize("error_rate"), 2), "CER": round(cer.summarize("error_rate"), 2),
            "utterances": len(ids)}


def update_asr_results(path: str, rows: list[dict], scope: dict | None = None) -> pd.DataFrame:
    """Insert or replace rows (key: model, stage, corpus, split, decoder) of ``asr_results.csv``.

    ``scope`` (column -> value) names the rows a stage owns: those of them not in ``rows`` are
    removed, so a decoder or adaptation stage no longer configured leaves no stale score behind."""
    key = ["model", "stage", "corpus", "split", "decoder"]
    old = pd.read_csv(path, keep_default_na=False, dtype=str) if os.path.isfile(path) else pd.DataFrame(columns=ASR_RESULT_COLUMNS)
    if scope:
        owned = pd.Series(True, index=old.index)
        for column, value in scope.items():
            owned &= old[column] == str(value)
        old = old[~owned]
    new = pd.DataFrame(rows, columns=ASR_RESULT_COLUMNS).astype(str)
    merged = pd.concat([old[~old.set_index(key).index.isin(new.set_index(key).index)], new], ignore_index=True)
    write_csv(path, merged)
    return merged


def score_pretrained(hparams: dict, model: torch.nn.Module, features: torch.nn.Module, device: str, out_dir: str,
                     corpus: str, checkpoint: str | None) -> tuple[list[dict], dict]:
    """Stage 2's scores of the pretrained model on the ASR corpus's dev and test splits, with each of
    ``hparams["decoders"]``: ``(rows of asr_results.csv, {split: {decoder: scores}})``."""
    from ser_modules.data.datasets import asr_dataset

    vocab = hparams["vocab"]
    bos, eos = getattr(model, "bos_index", None), getattr(model, "eos_index", None)
    rows, summary = [], {}
    for split, csv in (("dev", hparams["valid_csv"]), ("test", hparams["test_csv"])):
        res = evaluate_asr(model, features, asr_dataset(csv, vocab, bos, eos), vocab, device, out_dir, split,
                           hparams["decoders"], hparams.get("eval_batch_size", 16), hparams.get("beam_size", 10),
                           hparams.get("decode_ctc_weight", 0.5), hparams.get("num_workers", 0))
        for method, r in res.items():
            rows.append({"model": hparams["model_name"], "stage": "pretrained", "corpus": corpus, "split": split,
                         "decoder": method, **r, "checkpoint": os.path.join("asr", checkpoint) if checkpoint else ""})
        summary[split] = res
    return rows, summary
