"""ASR training on the tiny demo corpus: losses fall, resuming repeats an uninterrupted run, DDP."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import speechbrain as sb
import torch

from prepare_librispeech import read_librispeech
from ser_modules.asr.adaptation import run_stage, stage_epochs, stage_lr
from ser_modules.asr.brains import CTCBrain, LASBrain
from ser_modules.asr.evaluation import evaluate_asr, update_asr_results
from ser_modules.asr.training import fit_asr, run_options
from ser_modules.data.datasets import LengthBucketBatchSampler, asr_dataset
from ser_modules.utils.fileio import ManifestError
from ser_modules.utils.hparams import load_stage_hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "ctc_transfer": ["asr.conv_channels=2", "asr.rnn_layers=2", "asr.rnn_hidden=24", "asr.batch_size=4", "asr.patience=100",
                     "asr.lr=0.001"],
    "las_adapt": ["asr.listener_hidden=32", "asr.fc_size=32", "asr.speller_hidden=32", "asr.attention_dim=16", "asr.patience=100",
                  "asr.embedding_dim=8", "asr.batch_size=4", "asr.lr=0.01"],
}


@pytest.fixture(scope="module")
def asr_data(tiny_demo, tmp_path_factory):
    """16 training and 4 dev utterances of the tiny demo's LibriSpeech layout."""
    out = tmp_path_factory.mktemp("asr_data")
    splits = read_librispeech(tiny_demo["librispeech"])
    splits["train"].sort_values("duration").head(16).to_csv(out / "train.csv", index=False)
    for split in ("dev", "test"):
        splits[split].sort_values("duration").head(4).to_csv(out / f"{split}.csv", index=False)
    return str(out)


def tiny_hparams(recipe, asr_data, out, *extra):
    runner = {"output_folder": str(out), "data_folder": asr_data, "seed": 3}
    hparams, _ = load_stage_hparams(os.path.join(REPO, "recipes", recipe, "conf"), "asr", "demo", runner,
                                    TINY[recipe] + list(extra))
    return hparams


def train_losses(brain_cls, hparams, epochs):
    losses = []

    class Recording(brain_cls):
        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN:
                losses.append(stage_loss)
            super().on_stage_end(stage, stage_loss, epoch)

    hparams["epoch_counter"].limit = epochs
    fit_asr(hparams, run_options("cpu", noprogressbar=True), Recording)
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("recipe,brain,epochs,ratio", [("ctc_transfer", CTCBrain, 4, 0.8), ("las_adapt", LASBrain, 15, 0.8)])
def test_training_loss_falls(recipe, brain, epochs, ratio, asr_data, tmp_path):
    losses = train_losses(brain, tiny_hparams(recipe, asr_data, tmp_path), epochs=epochs)
    assert len(losses) == epochs
    assert losses[-1] < ratio * losses[0], losses
    log = (tmp_path / "train_log.txt").read_text()
    assert f"epoch: {epochs}" in log and "valid CER" in log


def test_resume_after_interrupted_epoch_matches_uninterrupted(asr_data, tmp_path):
    whole = tiny_hparams("ctc_transfer", asr_data, tmp_path / "whole")
    train_losses(CTCBrain, whole, epochs=2)
    expected = {k: v.clone() for k, v in whole["model"].state_dict().items()}

    class Interrupted(CTCBrain):
        def fit_batch(self, batch):
            if self.hparams.epoch_counter.current == 2 and self.step == 2:
                raise KeyboardInterrupt("power cut in epoch 2")
            return super().fit_batch(batch)

    first = tiny_hparams("ctc_transfer", asr_data, tmp_path / "resumed")
    first["epoch_counter"].limit = 2
    with pytest.raises(KeyboardInterrupt):
        fit_asr(first, run_options("cpu", noprogressbar=True), Interrupted)
    second = tiny_hparams("ctc_transfer", asr_data, tmp_path / "resumed")  # a fresh process would rebuild all
    train_losses(CTCBrain, second, epochs=2)
    assert second["epoch_counter"].current == 2
    for name, value in second["model"].state_dict().items():
        assert torch.equal(value, expected[name]), name


def adaptation_hparams(asr_hp, out, *overrides):
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "las_adapt", "conf"), "adapt", "demo",
                               {"output_folder": str(out)},
                               ["adapt.lr=0.01", "adapt.batch_size=4", "adapt.select_on=CER", *overrides])
    return {**hp, "vocab": asr_hp["vocab"], "features": asr_hp["features"]}


@pytest.mark.parametrize("start_cer,keeps_start", [(50.0, True), (1000.0, False)])
def test_adaptation_stage_keeps_its_start_unless_an_epoch_beats_it(asr_data, tmp_path, start_cer, keeps_start):
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    model = asr_hp["model"]
    start = {k: v.clone() for k, v in model.state_dict().items()}

    class ValidCER90(LASBrain):  # every epoch scores validation CER 90
        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.VALID:
                self.cer_stats.summarize = lambda field=None: 90.0
            super().on_stage_end(stage, stage_loss, epoch)

    data = {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]}
    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.epochs_per_stage=2")
    record = run_stage(model, hp, "all", 1.0, data, str(tmp_path / "stage"), run_options("cpu", noprogressbar=True),
                       ValidCER90, start_error=start_cer)
    assert record["kept_start"] is keeps_start and record["valid"] == min(start_cer, 90.0)
    adapted = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(adapted[k], start[k]) for k in start) is keeps_start  # trained weights differ
    # A rerun (a new process) restores the same weights from disk without training.
    fresh = tiny_hparams("las_adapt", asr_data, tmp_path / "asr2")["model"]
    again = run_stage(fresh, hp, "all", 1.0, data, str(tmp_path / "stage"), run_options("cpu", noprogressbar=True),
                      ValidCER90, start_error=start_cer)
    assert again == record and all(torch.equal(fresh.state_dict()[k], adapted[k]) for k in adapted)


def test_adaptation_stage_scores_its_start_when_not_given(asr_data, tmp_path):
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    data = {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]}
    model = asr_hp["model"]
    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.lr=0.0")  # no update: every epoch ties the start
    method = hp["valid_decoder"]  # the demo's: joint CTC/attention
    expected = evaluate_asr(model, asr_hp["features"], asr_dataset(data["valid"], asr_hp["vocab"]), asr_hp["vocab"],
                            "cpu", str(tmp_path), "valid", (method,), beam_size=hp["beam_size"],
                            ctc_weight=hp["decode_ctc_weight"])[method]["CER"]
    record = run_stage(model, hp, "encoder", 1.0, data, str(tmp_path / "stage"),
                       run_options("cpu", noprogressbar=True), LASBrain)
    assert record["start"] == pytest.approx(expected, abs=0.01) and record["kept_start"]


def test_adaptation_stage_learning_rates(asr_data, tmp_path):
    hp = {"lr": 1e-3, "stages": ["encoder", "decoder", "all"]}
    assert stage_lr(hp, "decoder") == 1e-3  # no scales: the shared lr
    hp["stage_lr_scale"] = [1.0, 0.25, 0.5]
    assert [stage_lr(hp, p) for p in hp["stages"]] == [1e-3, 2.5e-4, 5e-4]
    with pytest.raises(ManifestError, match="stage_lr_scale has 2 entries for 3 stages"):
        stage_lr({**hp, "stage_lr_scale": [1.0, 0.5]}, "all")
    assert [stage_epochs({**hp, "epochs_per_stage": 10}, p) for p in hp["stages"]] == [10, 10, 10]
    assert [stage_epochs({**hp, "epochs_per_stage": [1, 2, 5]}, p) for p in hp["stages"]] == [1, 2, 5]
    with pytest.raises(ManifestError, match="epochs_per_stage has 4 entries for 3 stages"):
        stage_epochs({**hp, "epochs_per_stage": [1, 2, 3, 4]}, "all")
    # The optimiser of a stage runs at its scaled rate.
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    seen = []

    class Recording(LASBrain):
        def on_stage_end(self, stage, stage_loss, epoch=None):
            seen.append(self.optimizer.param_groups[0]["lr"])
            super().on_stage_end(stage, stage_loss, epoch)

    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.epochs_per_stage=1", "adapt.stage_lr_scale=[1.0,0.1,1.0]")
    run_stage(asr_hp["model"], hp, "decoder", 1.0, {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]},
              str(tmp_path / "stage"), run_options("cpu", noprogressbar=True), Recording, start_error=50.0)
    assert seen and all(lr == pytest.approx(0.001) for lr in seen)  # adapt.lr=0.01 x 0.1


def test_sampler_sortagrad_then_shuffled_buckets():
    lengths = [5.0, 1.0, 3.0, 2.0, 4.0, 6.0]
    sampler = LengthBucketBatchSampler(lengths, batch_size=2, sortagrad_epochs=1, seed=0)
    sampler.set_epoch(1)
    assert list(sampler) == [[1, 3], [2, 4], [0, 5]]  # epoch 1: ascending duration
    sampler.set_epoch(2)
    second = list(sampler)
    assert sorted(i for b in second for i in b) == list(range(6)) and len(second) == 3
    assert all(abs(lengths[a] - lengths[b]) <= 2 for a, b in second)  # buckets of similar length
    again = LengthBucketBatchSampler(lengths, batch_size=2, seed=0)
    again.set_epoch(2)
    assert list(again) == second  # the order depends only on seed and epoch


def test_evaluate_and_results_table(asr_data, tmp_path):
    hparams = tiny_hparams("ctc_transfer", asr_data, tmp_path)
    data = asr_dataset(hparams["test_csv"], hparams["vocab"])
    res = evaluate_asr(hparams["model"], hparams["features"], data, hparams["vocab"], "cpu", str(tmp_path), "test",
                       methods=("greedy", "beam"), beam_size=2)
    assert set(res) == {"greedy", "beam"} and res["greedy"]["utterances"] == len(pd.read_csv(hparams["test_csv"]))
    assert res["greedy"]["WER"] >= 0 and (tmp_path / "wer_test_greedy.txt").is_file()
    path = str(tmp_path / "asr_results.csv")
    row = {"model": "ds2", "stage": "pretrained", "corpus": "x", "split": "test", "decoder": "greedy", "WER": 50,
           "CER": 20, "utterances": 4, "checkpoint": ""}
    update_asr_results(path, [row, {**row, "split": "dev"}])
    update_asr_results(path, [{**row, "WER": 40}])  # replaces the test row, keeps dev
    table = pd.read_csv(path)
    assert len(table) == 2 and table.set_index("split").loc["test", "WER"] == 40
    # A stage's scope: its rows that it no longer writes (a decoder dropped from the config) go.
    other = {**row, "corpus": "y", "decoder": "beam"}
    update_asr_results(path, [other, {**row, "decoder": "beam"}])
    update_asr_results(path, [{**row, "decoder": "joint", "WER": 30}], scope={"corpus": "x"})
    table = pd.read_csv(path)
    assert sorted(zip(table["corpus"], table["decoder"])) == [("x", "joint"), ("y", "beam")]


DDP_SCRIPT = r"""
import os, sys, torch
import speechbrain as sb
sys.path.insert(0, {tests!r})
from test_asr_training import tiny_hparams
from ser_modules.asr.brains import CTCBrain
from ser_modules.asr.training import fit_asr, run_options

class NaNOnRank1Step2(CTCBrain):  # one process meets a non-finite loss: every process must skip that step
    def compute_objectives(self, predictions, batch, stage):
        loss = super().compute_objectives(predictions, batch, stage)
        bad = stage == sb.Stage.TRAIN and self.step == 2 and os.environ["RANK"] == "1"
        return loss * float("nan") if bad else loss

hp = tiny_hparams("ctc_transfer", {data!r}, os.path.join({out!r}, "exp"))
hp["epoch_counter"].limit = 1
hp["curves_dir"], hp["curves_every_steps"] = os.path.join({out!r}, "board"), 1
brain = fit_asr(hp, run_options("cpu", noprogressbar=True), NaNOnRank1Step2)
torch.save({{"model": hp["model"].state_dict(), "skipped": brain.skipped_batches}},
           os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_identical_and_skip_a_non_finite_step_together(asr_data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__), data=asr_data, out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.path.join(REPO, "local"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a["skipped"] == b["skipped"] == 1  # rank 1's non-finite loss skipped the step on both ranks
    a, b = a["model"], b["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    untrained = tiny_hparams("ctc_transfer", asr_data, tmp_path / "fresh")["model"].state_dict()
    assert any(not torch.equal(a[n], untrained[n]) for n in a)  # the replicas did train
    # the curves: rank 0's event file only, each optimizer step once
    from ser_modules.utils.curves import read_curves

    assert len([f for f in os.listdir(tmp_path / "board") if f.startswith("events.")]) == 1
    curves = read_curves(str(tmp_path / "board"))
    steps = [s for s, _ in curves["step/loss_train"]]
    assert steps == list(range(1, len(steps) + 1)) and len(curves["loss/valid"]) == 1


# ----------------------------------------------------------------------------------------------
# The loss and the metrics against hand computations


def test_ctc_loss_equals_the_hand_sum_over_alignments_and_torch():
    """Two utterances over {blank, A}: "A" in 2 frames (alignments AA, A-, -A) and "AA" in 3 frames
    (only A-A); the loss is the negative log-likelihood summed over utterances, averaged over the batch."""
    from types import SimpleNamespace

    logits = torch.tensor([[[0.2, 1.0], [0.5, -0.3], [0.0, 0.0]], [[1.5, -0.5], [-1.0, 0.7], [0.3, 0.9]]])
    p = logits.softmax(-1)  # [B, T, (blank, A)]
    p_a = p[0, 0, 1] * p[0, 1, 1] + p[0, 0, 1] * p[0, 1, 0] + p[0, 0, 0] * p[0, 1, 1]
    p_aa = p[1, 0, 1] * p[1, 1, 0] * p[1, 2, 1]
    by_hand = -(torch.log(p_a) + torch.log(p_aa)) / 2
    tokens = torch.tensor([[1, 0], [1, 1]])
    batch = SimpleNamespace(tokens=(tokens, torch.tensor([0.5, 1.0])))
    loss = CTCBrain.compute_objectives(SimpleNamespace(device="cpu"), (logits, torch.tensor([2, 3])), batch,
                                       sb.Stage.TRAIN)
    torch_loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), tokens, torch.tensor([2, 3]),
                                              torch.tensor([1, 2]), blank=0, reduction="sum") / 2
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(torch_loss) == pytest.approx(float(by_hand), rel=1e-5)


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance by the textbook dynamic programme."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_wer_and_cer_equal_edit_distances_counted_by_hand():
    from ser_modules.asr.evaluation import error_rates

    refs = ["THE CAT SAT", "A B C", "HELLO"]
    hyps = ["THE BAT SAT ON", "A C", ""]
    # Words: CAT->BAT and +ON (2), -B (1), -HELLO (1): 4 errors over 3 + 3 + 1 reference words.
    # Characters (spaces count): C->B and +" ON" (4), -"B " (2), -HELLO (5): 11 over 11 + 5 + 5.
    assert [edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps)] == [2, 1, 1]
    assert [edit_distance(list(r), list(h)) for r, h in zip(refs, hyps)] == [4, 2, 5]
    got = error_rates(["u1", "u2", "u3"], refs, hyps)
    assert got["WER"] == pytest.approx(round(100 * 4 / 7, 2))
    assert got["CER"] == pytest.approx(round(100 * 11 / 21, 2))
    assert got["utterances"] == 3


def test_ctc_beam_search_finds_the_most_probable_labelling_of_an_exhaustive_search():
    """On a 3-symbol vocabulary (blank, A, B) and 5 frames, the labelling with the highest total
    probability over all 3^5 alignments is what the beam search returns; greedy returns the collapsed
    best single path."""
    import itertools

    from ser_modules.asr.decoding import Transcriber
    from ser_modules.data.text import CharVocabulary
    from ser_modules.models.ds2 import DeepSpeech2

    class Fixed(DeepSpeech2):
        def __init__(self, logits):
            torch.nn.Module.__init__(self)
            self.logits = logits

        def forward(self, feats, frames):
            return self.logits, frames

    vocab, frames = CharVocabulary(specials=["<blank>"], characters=["A", "B"]), 5
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        logits = 1.5 * torch.randn(1, frames, 3, generator=gen)
        log_probs = logits.log_softmax(-1)[0]
        total, best_path = {}, None
        for path in itertools.product(range(3), repeat=frames):
            text = vocab.decode([s for i, s in enumerate(path) if s and (i == 0 or s != path[i - 1])])
            score = float(log_probs[range(frames), list(path)].sum())
            total[text] = total.get(text, 0.0) + np.exp(score)
            if best_path is None or score > best_path[0]:
                best_path = (score, text)
        transcriber = Transcriber(Fixed(logits), vocab, beam_size=50)
        feats, lengths = torch.zeros(1, frames, 1), torch.tensor([frames])
        assert transcriber(feats, lengths, "beam") == [max(total, key=total.get)]
        assert transcriber(feats, lengths, "greedy") == [best_path[1]]


class _FixedCTC(torch.nn.Module):
    """A CTC head whose log-probabilities spell ``path`` frame by frame (one symbol per encoder frame)."""

    def __init__(self, path, n_symbols):
        super().__init__()
        self.path, self.n_symbols = path, n_symbols

    def forward(self, enc):
        logits = torch.full((*enc.shape[:2], self.n_symbols), -12.0)
        for t in range(enc.shape[1]):
            logits[:, t, self.path[min(t, len(self.path) - 1)]] = 12.0
        return logits


def test_joint_decoding_follows_a_confident_ctc_head_and_ignores_padding():
    """A randomly initialised speller alone spells nonsense; with a CTC head that is certain of
    "ABBA" (frames A A _ B _ B A A ...), joint CTC/attention beam search at CTC weight 0.9 spells exactly
    it, for every utterance of a padded batch; DS2 and a LAS without CTC head refuse ``joint``."""
    from ser_modules.asr.decoding import Transcriber
    from ser_modules.data.text import CharVocabulary
    from ser_modules.models.ds2 import DeepSpeech2
    from ser_modules.models.las import ListenAttendSpell

    torch.manual_seed(0)
    vocab = CharVocabulary(specials=["<blank>", "<sos>", "<eos>"], characters=["A", "B", " "])
    model = ListenAttendSpell(listener_hidden=6, fc_size=8, speller_hidden=8, attention_dim=8, embedding_dim=4,
                              n_symbols=len(vocab), ctc_head=True).eval()
    a, b = vocab.id_of("A"), vocab.id_of("B")
    model.ctc_output = _FixedCTC([a, a, 0, b, 0, b, a] + [a] * 20, len(vocab))
    feats = torch.randn(2, 60, 39)
    lengths = torch.tensor([40, 32])  # encoder frames 10 and 8; the batch pads to 15
    transcriber = Transcriber(model, vocab, beam_size=4, ctc_weight=0.9)
    assert transcriber(feats, lengths, "joint") == ["ABBA", "ABBA"]
    assert transcriber(feats, lengths, "beam") != ["ABBA", "ABBA"]  # the attention decoder alone does not know it
    with pytest.raises(ValueError, match="joint CTC/attention decoding needs a LAS with a CTC head"):
        Transcriber(ListenAttendSpell(listener_hidden=6, fc_size=8, speller_hidden=8, attention_dim=8,
                                      embedding_dim=4, n_symbols=len(vocab)).eval(), vocab)(feats, lengths, "joint")
    with pytest.raises(ValueError, match="needs a LAS with a CTC head; this DeepSpeech2"):
        Transcriber(DeepSpeech2(conv_channels=2, rnn_layers=1, rnn_hidden=8), CharVocabulary())(feats, lengths, "joint")


def test_fast_ctc_prefix_score_equals_speechbrains_through_a_search():
    """Our full-vocabulary CTC prefix score gives SpeechBrain's ``CTCPrefixScore`` scores and states (float
    rounding) over 20 steps of a batch with padded utterances, hypotheses reordered between steps as a beam
    search does; and a joint beam search with a trained-looking random LAS spells the same with either."""
    from speechbrain.decoders.ctc import CTCPrefixScore
    from speechbrain.decoders.scorer import CTCScorer as SpeechBrainCTCScorer
    from speechbrain.decoders.scorer import ScorerBuilder
    from speechbrain.decoders.seq2seq import S2SRNNBeamSearcher

    from ser_modules.asr.ctc_prefix import CTCScorer, FastCTCPrefixScore
    from ser_modules.models.las import ListenAttendSpell

    torch.manual_seed(0)
    B, T, V, beam = 3, 30, 9, 4
    x = torch.randn(B, T, V).mul(3).log_softmax(-1)
    lens = torch.tensor([30, 21, 9])
    ref, fast = CTCPrefixScore(x, lens, 0, V - 1), FastCTCPrefixScore(x, lens, 0, V - 1)
    ref_state = fast_state = None
    tokens = torch.full((B * beam,), 1, dtype=torch.long)
    for _ in range(20):
        ref_scores, ref_state = ref.forward_step(tokens, ref_state)
        fast_scores, fast_state = fast.forward_step(tokens, fast_state)
        torch.testing.assert_close(fast_scores, ref_scores, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(fast_state[0], ref_state[0], rtol=1e-5, atol=1e-4)
        index = torch.randint(0, beam * V, (B, beam))
        ref_state, fast_state = ref.permute_mem(ref_state, index), fast.permute_mem(fast_state, index)
        tokens = (index % V).view(-1)

    model = ListenAttendSpell(listener_hidden=6, fc_size=8, speller_hidden=8, attention_dim=8, embedding_dim=4,
                              n_symbols=V, ctc_head=True).eval()
    with torch.no_grad():
        enc, enc_lengths = model.listener(torch.randn(B, 60, 39), torch.tensor([60, 44, 28]))
    hyps = []
    for scorer_class in (SpeechBrainCTCScorer, CTCScorer):
        scorer = ScorerBuilder(full_scorers=[scorer_class(model.ctc_output, 0, model.eos_index)], weights={"ctc": 0.5})
        search = S2SRNNBeamSearcher(model.embedding, model.speller, model.output, bos_index=model.bos_index,
                                    eos_index=model.eos_index, min_decode_ratio=0.0, max_decode_ratio=1.0,
                                    beam_size=beam, scorer=scorer)
        with torch.no_grad():
            hyps.append(search(enc, enc_lengths.float() / enc.shape[1])[0])
    assert hyps[0] == hyps[1] and any(len(h) for h in hyps[0])


def test_greedy_ctc_drops_edge_and_repeated_spaces():
    """Frames ' ', A, blank, ' ', blank, ' ', B, ' ' collapse to ' A  B ' on the best path; the
    transcript is 'A B', as the references are written (a stray space would count as a CER error)."""
    from ser_modules.asr.decoding import ctc_greedy
    from ser_modules.data.text import CharVocabulary

    vocab = CharVocabulary(specials=["<blank>"])
    space, a, b = vocab.encode(" ")[0], vocab.encode("A")[0], vocab.encode("B")[0]
    path = [space, a, 0, space, 0, space, b, space]
    logits = torch.full((1, len(path), len(vocab)), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    assert ctc_greedy(logits, torch.tensor([len(path)]), vocab) == ["A B"]
    assert ctc_greedy(logits, torch.tensor([2]), vocab) == ["A"]


def test_spec_augment_masks_inside_each_utterance_only_while_training():
    from ser_modules.data.features import SpecAugment

    torch.manual_seed(0)
    feats = torch.randn(3, 50, 20) + 10.0  # no zero anywhere, so masked cells are the zeros
    frames = torch.tensor([50, 30, 8])
    feats[1, 30:] = 0.0
    feats[2, 8:] = 0.0
    augment = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10, max_time_ratio=0.2)
    widths_t, widths_f = [], []
    for _ in range(200):
        out = augment(feats.clone(), frames)
        zero = out == 0
        for i, n in enumerate(frames.tolist()):
            assert torch.equal(out[i, n:], feats[i, n:])  # padding untouched
            valid = zero[i, :n]
            masked_frames = valid.all(dim=1)  # a time mask zeroes every bin of a frame
            masked_bins = valid.all(dim=0)
            # Every zero lies in a masked frame or a masked band; kept cells equal the input.
            assert torch.equal(valid, masked_frames[:, None] | masked_bins[None, :])
            assert torch.equal(out[i, :n][~valid], feats[i, :n][~valid])
            assert masked_frames.sum() <= 2 * min(10, int(0.2 * n))  # 8-frame utterance: spans of at most 1
            assert masked_bins.sum() <= 2 * 5
            widths_t.append(int(masked_frames.sum()))
            widths_f.append(int(masked_bins.sum()))
    assert max(widths_t) >= 10 and max(widths_f) >= 6  # masks do reach their widths (two may join)
    assert min(widths_t) == 0  # U{0..width}: sometimes nothing is masked
    augment.eval()
    assert torch.equal(augment(feats.clone(), frames), feats)


def test_spec_augment_is_applied_to_training_batches_only(asr_data, tmp_path):
    from ser_modules.data.features import SpecAugment

    hparams = tiny_hparams("ctc_transfer", asr_data, tmp_path)
    hparams["spec_augment"] = SpecAugment(freq_masks=1, freq_width=161, time_masks=0)  # can blank a whole input
    hparams["speed_perturb"] = None  # the demo's speed perturbation would change every value
    brain = CTCBrain(modules={"model": hparams["model"]}, hparams=hparams, run_opts=run_options("cpu", noprogressbar=True))
    dataset = asr_dataset(os.path.join(asr_data, "train.csv"), hparams["vocab"])
    batch = sb.dataio.batch.PaddedBatch([dataset[0], dataset[1]])
    clean, frames = brain.features(batch, sb.Stage.VALID)
    torch.manual_seed(1)
    masked = [brain.features(batch, sb.Stage.TRAIN)[0] for _ in range(20)]
    assert all(torch.equal(brain.features(batch, sb.Stage.TEST)[0], clean) for _ in range(3))
    assert any(not torch.equal(m, clean) for m in masked)
    assert all(((m == clean) | (m == 0)).all() for m in masked)


def test_brain_moves_the_front_end_to_its_device(asr_data, tmp_path, monkeypatch):
    # Only `modules` follow the Brain to its device; a CUDA run with the STFT window left on the CPU
    # fails in torch.stft. Recorded on CPU: every front-end module of hparams is sent to brain.device.
    from ser_modules.data.features import SpecAugment

    hparams = tiny_hparams("ctc_transfer", asr_data, tmp_path)
    hparams["spec_augment"] = SpecAugment()
    moved = []
    original = torch.nn.Module.to

    def record(module, *args, **kwargs):
        moved.append((type(module).__name__, str(args[0]) if args else str(kwargs.get("device"))))
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", record)
    hparams["speed_perturb"].device = "cuda:3"  # a device it must not keep resampling on
    brain = CTCBrain(modules={"model": hparams["model"]}, hparams=hparams, run_opts=run_options("cpu", noprogressbar=True))
    assert (type(hparams["features"]).__name__, brain.device) in moved
    assert ("SpecAugment", brain.device) in moved
    assert ("SpeedPerturb", brain.device) in moved  # the demo config perturbs speed
    assert hparams["speed_perturb"].device == brain.device  # where SpeechBrain's SpeedPerturb resamples
