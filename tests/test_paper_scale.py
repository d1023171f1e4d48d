"""What the first paper-scale run needs (README, "Running at paper scale"), checked on the CPU: the
papers' LibriSpeech subsets, unusable audio rejected in stage 1, stage 2 resumed mid-epoch after
kill -9, unfinished work of another configuration kept aside, non-finite losses skipped, ranks and
workers mapped to distinct GPUs, loader workers that see the batches in-process loading sees."""

from __future__ import annotations

import os
import pickle
import shutil
import types

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import speechbrain as sb
import torch

from background import started, starts
from ser_modules.utils.fileio import ManifestError, StagedOutputs, TrainingDiverged, read_json
from test_asr_training import asr_data  # noqa: F401 (a fixture: 16 training, 4 dev utterances of the tiny demo)
from test_faults import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Stage 1: the papers' LibriSpeech subsets, the audio check


LIBRISPEECH_SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "test-clean")


def write_librispeech(root, subsets=LIBRISPEECH_SUBSETS, seconds=0.5) -> str:
    """One chapter of two utterances per subset, each subset's own speaker."""
    for k, subset in enumerate(subsets):
        folder = os.path.join(root, subset, str(100 + k), "7")
        os.makedirs(folder)
        with open(os.path.join(folder, f"{100 + k}-7.trans.txt"), "w") as f:
            for n in range(2):
                sf.write(os.path.join(folder, f"{100 + k}-7-000{n}.flac"), tone(seconds * (n + 1)), 16000)
                f.write(f"{100 + k}-7-000{n} HELLO WORLD\n")
    return str(root)


@pytest.fixture(scope="module")
def csv_corpus(tmp_path_factory):
    from corpus_fixtures import write_csv_corpus

    return write_csv_corpus(tmp_path_factory.mktemp("csv_corpus"))


def prepare(csv_corpus, librispeech, out, *args):
    from prepare_data import main

    main(["--emotion-corpus", "csv", "--emotion-root", csv_corpus, "--asr-corpus", "librispeech", "--asr-root",
          librispeech, "--out", str(out), "--nj", "1", *args])
    return read_json(os.path.join(out, "prepare_summary.json"))


def test_size_paper_trains_on_the_papers_three_librispeech_subsets(csv_corpus, tmp_path, caplog):
    librispeech = write_librispeech(tmp_path / "LibriSpeech")
    caplog.set_level("INFO")
    summary = prepare(csv_corpus, librispeech, tmp_path / "paper", "--size", "paper")
    info = summary["asr"]["corpora"]["librispeech"]
    assert info["subsets"]["train"] == ["train-clean-100", "train-clean-360", "train-other-500"]
    train = pd.read_csv(tmp_path / "paper" / "asr" / "train.csv")
    assert sorted({i.split("-")[1] for i in train["ID"]}) == ["100", "101", "102"]  # the three speakers
    assert info["train"]["utterances"] == 6 and info["train"]["hours"] == round(3 * 1.5 / 3600, 3)
    assert summary["asr"]["dev"]["utterances"] == 2 and summary["asr"]["test"]["utterances"] == 2
    assert "ASR corpus librispeech" in caplog.text and "train 0.00 h (6 utterances, 0 rejected)" in caplog.text
    demo = prepare(csv_corpus, librispeech, tmp_path / "demo", "--size", "demo")
    assert demo["asr"]["corpora"]["librispeech"]["train"]["utterances"] == 2  # train-clean-100 only
    fewer = prepare(csv_corpus, librispeech, tmp_path / "fewer", "--size", "paper", "--librispeech-subsets",
                    "train=train-clean-100,train-clean-360;dev=dev-clean;test=test-clean")
    assert fewer["asr"]["corpora"]["librispeech"]["train"]["utterances"] == 4

    shutil.rmtree(os.path.join(librispeech, "train-other-500"))
    with pytest.raises(ManifestError, match=r"LibriSpeech subset\(s\) train-other-500 not found .*--librispeech-subsets"):
        prepare(csv_corpus, librispeech, tmp_path / "missing", "--size", "paper")
    assert not (tmp_path / "missing" / "asr").exists()  # refused before anything was read or written


def test_audio_problems_are_named_with_the_file(tmp_path):
    from ser_modules.data.audio_screen import MIN_SECONDS
    from ser_modules.utils.audio_file import audio_problem

    def wav(name, data, subtype="FLOAT"):
        path = str(tmp_path / name)
        sf.write(path, np.asarray(data, dtype=np.float32), 16000, subtype=subtype)
        return path

    (tmp_path / "garbage.flac").write_bytes(b"not audio at all" * 10)
    nan = tone(0.1)
    nan[5] = np.nan
    assert audio_problem(wav("ok.wav", tone(0.1))) is None
    assert "garbage.flac: not a readable audio file" in audio_problem(str(tmp_path / "garbage.flac"))
    assert "nan.wav: 1 of 1600 samples are not finite" in audio_problem(wav("nan.wav", nan))
    assert "silent.wav: every sample is zero" in audio_problem(wav("silent.wav", np.zeros(1600)))
    assert "short.wav: 20.0 ms is shorter than the model's minimum of 25.0 ms" in audio_problem(wav("short.wav", tone(0.02)), min_seconds=MIN_SECONDS)
    assert "empty.wav: the file holds no audio samples" in audio_problem(wav("empty.wav", []))
    assert "ok.wav: empty segment [0.5, 0.6] s of a 0.10 s file" in audio_problem(str(tmp_path / "ok.wav"), 0.5, 0.6)  # a segment past the end
    # A segment is judged on its own samples: silence elsewhere in the file does not matter.
    path = wav("half.wav", np.concatenate([np.zeros(1600), tone(0.1)]))
    assert audio_problem(path, 0.1, 0.2) is None and "every sample is zero" in audio_problem(path, 0.0, 0.1)


@pytest.mark.slow
def test_stage1_rejects_unreadable_nan_and_silent_audio_and_stage2_trains(tiny_demo, tmp_path):
    librispeech = str(tmp_path / "LibriSpeech")
    shutil.copytree(tiny_demo["librispeech"], librispeech)
    chapter = next(os.path.join(d) for d, _, files in sorted(os.walk(os.path.join(librispeech, "train-clean-100")))
                   if any(f.endswith(".trans.txt") for f in files))
    trans = next(os.path.join(chapter, f) for f in os.listdir(chapter) if f.endswith(".trans.txt"))
    stem = os.path.basename(trans)[: -len(".trans.txt")]
    bad = {"unreadable": f"{stem}-9001", "nan": f"{stem}-9002", "silent": f"{stem}-9003"}
    (tmp_path / "x").write_bytes(b"\x00garbage" * 100)
    shutil.copy(tmp_path / "x", os.path.join(chapter, bad["unreadable"] + ".flac"))
    nan = tone(1.0)
    nan[100:200] = np.nan
    sf.write(os.path.join(chapter, bad["nan"] + ".wav"), nan, 16000, subtype="FLOAT")  # FLAC cannot hold NaN
    sf.write(os.path.join(chapter, bad["silent"] + ".flac"), np.zeros(16000, np.float32), 16000)
    with open(trans, "a") as f:
        f.writelines(f"{utt} SOME WORDS\n" for utt in bad.values())

    exp = tmp_path / "exp"
    proc = run(exp, tiny_demo, "--stop-stage", "2", "asr.n_epochs=1", asr_root=librispeech)
    rejected = pd.read_csv(exp / "data" / "asr" / "rejected.csv", keep_default_na=False)
    assert sorted(rejected["ID"]) == sorted(f"ls-{u}" for u in bad.values())
    reason = dict(zip(rejected["ID"], rejected["reason"]))
    assert "not a readable audio file" in reason[f"ls-{bad['unreadable']}"]
    assert "100 of 16000 samples are not finite" in reason[f"ls-{bad['nan']}"]
    assert "every sample is zero" in reason[f"ls-{bad['silent']}"]
    assert set(rejected["split"]) == {"train"} and set(rejected["corpus"]) == {"librispeech"}
    train = pd.read_csv(exp / "data" / "asr" / "train.csv")
    assert not set(train["ID"]) & set(rejected["ID"])
    assert "3 of" in proc.stderr and "utterances rejected" in proc.stderr
    assert (exp / "asr" / "model.pt").is_file()  # stage 2 trained on the rest
    assert (exp / "data" / "emotion" / "rejected.csv").read_text().strip() == \
        "corpus,split,ID,wav,seg_start,seg_end,reason"  # the emotion corpus had nothing to reject
    summary = read_json(exp / "data" / "prepare_summary.json")
    assert summary["asr"]["corpora"]["librispeech"]["train"]["rejected"] == 3


# ----------------------------------------------------------------------------------------------
# Stage 2: checkpoints inside an epoch, resume at the next batch; other configurations kept aside


def test_unfinished_work_of_another_configuration_is_moved_aside_and_taken_back(tmp_path, caplog):
    folder = str(tmp_path / "run0")
    first = StagedOutputs(folder, {"batch_size": 20})
    work = first.begin()
    with open(os.path.join(work, "checkpoint"), "w") as f:
        f.write("three days of training")
    caplog.set_level("INFO")
    second = StagedOutputs(folder, {"batch_size": 16})
    assert second.begin() == work and os.listdir(work) == ["inputs.json"]  # a fresh start for the new inputs
    aside = first.aside_path({"batch_size": 20})
    assert os.path.basename(aside).startswith(".run0.aside-")
    with open(os.path.join(aside, "checkpoint")) as f:
        assert f.read() == "three days of training"
    assert f"moved aside to {aside}" in caplog.text and "delete it to free the disk" in caplog.text
    # The first configuration again takes its work back, and the second's is set aside in turn.
    assert StagedOutputs(folder, {"batch_size": 20}).begin() == work
    with open(os.path.join(work, "checkpoint")) as f:
        assert f.read() == "three days of training"
    assert "resuming the unfinished work of these inputs" in caplog.text
    assert not os.path.exists(aside) and os.path.isdir(second.aside_path({"batch_size": 16}))


def test_a_work_folder_stopped_while_writing_its_inputs_is_begun_afresh(tmp_path):
    """A signal between begin()'s folder and its inputs.json leaves only the atomic write's temporary file
    (seen in the stage-3 SIGTERM test): nothing to keep aside, the work starts there again."""
    folder = tmp_path / "session1"
    staged = StagedOutputs(str(folder), {"variant": "finetuned"})
    os.makedirs(staged.work)
    (tmp_path / ".session1.partial" / ".inputs.json.edk2wyr1.tmp.json").write_text('{"varia')
    assert staged.begin() == staged.work and os.listdir(staged.work) == ["inputs.json"]
    assert sorted(os.listdir(tmp_path)) == [".session1.partial"]  # no .aside- folder
    (tmp_path / ".session1.partial" / "checkpoint").write_text("work")  # real work of unknown inputs is kept
    os.remove(tmp_path / ".session1.partial" / "inputs.json")
    StagedOutputs(str(folder), {"variant": "finetuned"}).begin()
    assert [n for n in os.listdir(tmp_path) if ".aside-" in n]


def model_state(exp) -> dict:
    return torch.load(exp / "asr" / "model.pt")


TRAIN = ["--stop-stage", "2", "asr.batch_size=2", "asr.ckpt_interval_minutes=0", "asr.curves_every_steps=1"]


@starts("kill_9_runs")
def _start_kill_9_runs(bg, session):
    """Stage 2 uninterrupted; and killed after a step checkpoint, rerun with another batch size (out of memory,
    say), then with the first one again (in the background, tests/background.py)."""
    demo, root = bg.start("tiny_demo"), bg.tmp.mktemp("kill_9")

    def whole():
        run(root / "whole", demo.result(), *TRAIN)
        return model_state(root / "whole")

    def interrupted():
        exp = root / "exp"
        killed = run(exp, demo.result(), *TRAIN, "asr.ckpt_interval_steps=2", check=False,
                     env={"SER_FAULT": "step_checkpoint:1:SIGKILL"})
        ckpts = sorted(d for d in os.listdir(exp / ".asr.partial" / "save") if d.startswith("CKPT"))
        saved = {c: ((exp / ".asr.partial" / "save" / c / "CKPT.yaml").read_text(),
                     read_json(exp / ".asr.partial" / "save" / c / "counter.ckpt")) for c in ckpts}
        other = run(exp, demo.result(), "--stop-stage", "2", "asr.batch_size=3", "asr.ckpt_interval_minutes=0")
        asides = [d for d in os.listdir(exp) if d.startswith(".asr.aside-")]
        aside_ckpts = [os.listdir(exp / d / "save") for d in asides]
        resumed = run(exp, demo.result(), *TRAIN, "asr.ckpt_interval_steps=2")
        return exp, killed, saved, other, aside_ckpts, resumed

    return bg.run(whole), bg.run(interrupted)


kill_9_runs = started("kill_9_runs")


def test_kill_9_after_a_step_checkpoint_resumes_mid_epoch_and_a_changed_batch_size_keeps_the_run(kill_9_runs):
    whole, interrupted = kill_9_runs
    exp, killed, saved, other, aside_ckpts, resumed = interrupted.result()
    assert killed.returncode != 0
    assert len(saved) == 1
    ckpt, (yaml_text, counter) = next(iter(saved.items()))
    assert "brain_intra_epoch_ckpt" in yaml_text and counter["current_epoch"] == 1

    # After an out-of-memory error the user lowers the batch: the unfinished run is kept aside, not deleted.
    assert "moved aside to" in other.stderr
    assert aside_ckpts == [[ckpt]]

    # Back to the first batch size: that run is taken back and continues at the batch after its checkpoint.
    assert "resuming the unfinished work of these inputs" in resumed.stderr
    assert "stage 2 resumes from the latest checkpoint" in resumed.stderr
    got, expected = model_state(exp), whole.result()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not [d for d in os.listdir(exp) if d.startswith((".asr.aside-", ".asr.partial"))]
    # The curves as TensorBoard shows them: the killed and resumed run's steps once each, equal to the uninterrupted
    # run's (the batch-3 run is a training configuration of its own: a folder of its own)
    from ser_modules.utils.curves import read_curves

    board = os.path.join(exp.parent / "whole", "tensorboard", "stage2")
    (model,) = os.listdir(board)
    (config,) = os.listdir(os.path.join(board, model))
    assert len(os.listdir(exp / "tensorboard" / "stage2" / model)) == 2
    uninterrupted = read_curves(os.path.join(board, model, config))
    interrupted_curves = read_curves(str(exp / "tensorboard" / "stage2" / model / config))
    assert set(interrupted_curves) == set(uninterrupted) >= {"step/loss_train", "loss/valid", "CER/valid"}
    for tag, points in uninterrupted.items():
        assert [s for s, _ in interrupted_curves[tag]] == [s for s, _ in points], tag
        assert [v for _, v in interrupted_curves[tag]] == pytest.approx([v for _, v in points], rel=1e-5), tag


@starts("more_epochs_run")
def _start_more_epochs_run(bg, session):
    demo, exp = bg.start("tiny_demo"), bg.tmp.mktemp("more_epochs") / "exp"

    def runs():
        run(exp, demo.result(), *TRAIN, "asr.n_epochs=1")
        return exp, run(exp, demo.result(), *TRAIN, "asr.n_epochs=2")

    return bg.run(runs)


more_epochs_run = started("more_epochs_run")


def test_raising_n_epochs_continues_the_finished_run(more_epochs_run):
    exp, more = more_epochs_run.result()
    assert "stage 2 resumes from the latest checkpoint" in more.stderr and "moved aside" not in more.stderr
    log = (exp / "asr" / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1  # epoch 1 was not trained again
    assert read_json(exp / "asr" / "done.json")["epochs"] == 2


def test_the_epoch_counter_checkpoints_its_early_stopping_state(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    from ser_modules.asr.brains import EpochCounterWithStopper

    counter = EpochCounterWithStopper(limit=20, limit_to_stop=2, limit_warmup=0, direction="min")
    checkpointer = Checkpointer(str(tmp_path), {"counter": counter})
    for epoch, cer in zip(counter, [50.0, 40.0, 45.0, 44.0, 43.0]):
        counter.update_metric(cer)
        checkpointer.save_checkpoint(end_of_epoch=True)
    assert counter.current == 4 and counter.should_stop  # epochs 3 and 4 did not beat epoch 2

    def recovered(**kwargs):
        again = EpochCounterWithStopper(**{"limit": 20, "limit_to_stop": 2, "limit_warmup": 0, "direction": "min",
                                           **kwargs})
        Checkpointer(str(tmp_path), {"counter": again}).recover_if_possible()
        return again

    same = recovered()  # SpeechBrain 1.1's own class forgets best epoch and score here
    assert (same.current, same.best_limit, same.best_score, same.should_stop) == (4, 2, 40.0, True)
    assert list(same) == []  # a rerun of the finished run trains nothing
    patient = recovered(limit_to_stop=5)  # patience raised: the run goes on from epoch 5
    assert not patient.should_stop and next(patient) == 5
    assert recovered(limit_to_stop=5, limit=4).__iter__() is not None and list(recovered(limit_to_stop=5, limit=4)) == []


# ----------------------------------------------------------------------------------------------
# Non-finite losses


def tiny_ctc(asr_data, out, *extra):
    from ser_modules.utils.hparams import load_stage_hparams

    runner = {"output_folder": str(out), "data_folder": asr_data, "seed": 3}
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "ctc_transfer", "conf"), "asr", "demo", runner,
                               ["asr.conv_channels=2", "asr.rnn_layers=1", "asr.rnn_hidden=8", "asr.batch_size=4",
                                "asr.patience=100", *extra])
    hp["epoch_counter"].limit = 1
    return hp


def test_a_non_finite_loss_skips_its_batch_and_is_counted(asr_data, tmp_path, caplog):
    from ser_modules.asr.brains import CTCBrain
    from ser_modules.asr.training import fit_asr, run_options

    class NaNOnStep2(CTCBrain):
        def compute_objectives(self, predictions, batch, stage):
            loss = super().compute_objectives(predictions, batch, stage)
            return loss * float("nan") if stage == sb.Stage.TRAIN and self.step == 2 else loss

    class LeavesOutStep2(CTCBrain):  # what skipping means: that batch never happened
        def fit_batch(self, batch):
            if self.step == 2:
                return torch.tensor(0.0)
            return super().fit_batch(batch)

    caplog.set_level("WARNING")
    # Without augmentation: the reference leaves the batch out before it draws its speed and masks,
    # so with it every later batch would draw other ones.
    plain = ("asr.speed_perturb_speeds=[]", "asr.spec_augment_masks=0")
    skipped = tiny_ctc(asr_data, tmp_path / "skipped", *plain)
    brain = fit_asr(skipped, run_options("cpu", noprogressbar=True), NaNOnStep2)
    assert brain.skipped_batches == 1
    assert "the loss of a training batch is not finite" in caplog.text and "1 skipped in this epoch" in caplog.text
    assert "1 training batch(es) with a non-finite loss skipped" in caplog.text
    assert "skipped_batches: 1" in (tmp_path / "skipped" / "train_log.txt").read_text()
    reference = tiny_ctc(asr_data, tmp_path / "reference", *plain)
    fit_asr(reference, run_options("cpu", noprogressbar=True), LeavesOutStep2)
    for (name, a), b in zip(skipped["model"].state_dict().items(), reference["model"].state_dict().values()):
        assert torch.isfinite(a.float()).all() and torch.equal(a, b), name

    class Diverged(CTCBrain):  # every batch fails: the run stops instead of skipping for days
        def compute_objectives(self, predictions, batch, stage):
            return super().compute_objectives(predictions, batch, stage) * float("nan")

    with pytest.raises(TrainingDiverged, match=r"epoch 1: 3 training batches in a row had a non-finite loss"):
        fit_asr(tiny_ctc(asr_data, tmp_path / "diverged", "asr.nonfinite_patience=2"),
                run_options("cpu", noprogressbar=True), Diverged)


# ----------------------------------------------------------------------------------------------
# Devices: ranks, workers and cluster jobs on distinct GPUs (no GPU needed)


@pytest.fixture
def eight_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_each_data_parallel_rank_takes_its_own_gpu(eight_gpus):
    from ser_modules.utils.jobs import resolve_device

    for device in ("cuda", "auto"):
        for rank in range(8):
            eight_gpus.setenv("LOCAL_RANK", str(rank))
            eight_gpus.setenv("WORLD_SIZE", "8")
            assert resolve_device(device) == f"cuda:{rank}"
    with pytest.raises(ManifestError, match=r"--device cuda:2 names one GPU, but 8 data-parallel processes"):
        resolve_device("cuda:2")
    eight_gpus.delenv("LOCAL_RANK")
    eight_gpus.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == "cuda:0" and resolve_device("cuda:5") == "cuda:5"
    assert resolve_device("cpu") == "cpu"


def test_stage_workers_share_every_visible_gpu_by_default(eight_gpus):
    from ser_modules.stages.common import stage_jobs
    from ser_modules.utils.jobs import _init_worker, job_devices, worker_state

    every = [f"cuda:{i}" for i in range(8)]
    assert job_devices("cuda", 0) == job_devices("auto", 0) == every  # the default --ngpu 0: all of them
    assert job_devices("cuda", 2) == ["cuda:0", "cuda:1"] and job_devices("cuda:3", 0) == ["cuda:3"]
    with pytest.raises(ManifestError, match=r"--ngpu 9: this process sees 8 GPU"):
        job_devices("cuda", 9)
    with pytest.raises(ManifestError, match=r"--device cuda:1 names one GPU, but --ngpu 4"):
        job_devices("cuda:1", 4)
    args = types.SimpleNamespace(device_request="auto", device="cuda:0", ngpu=0, nj=0)
    nj, devices = stage_jobs(args)
    assert (nj, devices) == (8, every)
    # Pool worker k (1-based identity) holds device k-1: eight workers, eight distinct GPUs.
    held = []
    for k in range(1, 9):
        eight_gpus.setattr("multiprocessing.current_process", lambda k=k: types.SimpleNamespace(_identity=(k,)))
        _init_worker({"devices": devices}, 1, None)
        held.append(worker_state()["device"])
    assert held == every


def test_a_cluster_job_resolves_its_device_on_its_own_node(monkeypatch):
    from ser_modules.utils import jobs

    def on_node(visible: int):  # the job's view: the GPUs Slurm gave it (gres gpu:1 -> cuda:0)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)

    on_node(0)  # the login node that submits has no GPU: stage 5 with a cluster launcher decides nothing there ...
    assert jobs.resolve_device("auto") == "cpu"
    from ser_modules.stages.common import parse_stage_args, stage_parser

    parser = stage_parser("stage 5")
    parser.add_argument("--launcher", default="pool")  # as stage 5's own parser has it
    args = parse_stage_args(parser, ["--exp-dir", "e", "--data-dir", "d", "--conf-dir", "c", "--device", "cuda",
                                     "--launcher", "slurm"])
    assert args.device == args.device_request == "cuda"  # no "no GPU is visible" error on the login node
    with pytest.raises(ManifestError, match="--device cuda: no GPU is visible"):  # the pool would compute here
        parse_stage_args(parser, ["--exp-dir", "e", "--data-dir", "d", "--conf-dir", "c", "--device", "cuda"])
    on_node(1)  # ... the compute node running the job has one
    assert jobs._run_submitted(lambda job: jobs.worker_state()["device"], {"device_request": "auto"}, None, "j") == "cuda:0"


# ----------------------------------------------------------------------------------------------
# Data loading: picklable datasets without a manifest copy per worker; batches by audio seconds


@pytest.mark.slow
def test_loader_workers_give_the_batches_of_in_process_loading(asr_data):
    from ser_modules.data.datasets import LengthBucketBatchSampler, asr_dataset, make_loader
    from ser_modules.data.text import CharVocabulary

    vocab = CharVocabulary(specials=["<blank>", "<sos>", "<eos>"])
    dataset = asr_dataset(os.path.join(asr_data, "train.csv"), vocab, 1, 2)
    # A pickled dataset carries paths, not the manifest: its size does not grow with the corpus.
    assert len(pickle.dumps(dataset)) < 2000
    assert len(pickle.loads(pickle.dumps(dataset))) == len(dataset) == 16

    def batches(workers, method=None):
        sampler = LengthBucketBatchSampler(dataset.durations, 3, sortagrad_epochs=0, seed=5)
        sampler.set_epoch(2)
        loader = make_loader(dataset, sampler, workers)
        if method:
            loader.multiprocessing_context = method
        return [(b.id, b.sig.data, b.sig.lengths, b.tokens.data, b.tokens_eos.data, b.transcript) for b in loader]

    in_process = batches(0)
    assert len(in_process) == 6
    for method in ("spawn", "forkserver"):
        got = batches(2, method)
        assert len(got) == len(in_process)
        for a, b in zip(got, in_process):
            assert a[0] == b[0] and a[5] == b[5]
            for x, y in zip(a[1:5], b[1:5]):
                assert torch.equal(x, y)


def test_batches_by_audio_seconds_stay_within_the_budget():
    from ser_modules.data.datasets import LengthBucketBatchSampler

    rng = np.random.default_rng(0)
    lengths = rng.uniform(1, 15, 500)
    sampler = LengthBucketBatchSampler(lengths, max_seconds=60.0, seed=1, sortagrad_epochs=1)
    counts = set()
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        counts.add(len(batches))
        assert sorted(i for b in batches for i in b) == list(range(500))  # every utterance once
        for b in batches:  # padded audio: utterances x the longest one
            assert len(b) * lengths[b].max() <= 60.0 or len(b) == 1
        if epoch == 1:  # SortaGrad: ascending
            assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(batches, batches[1:]))
    assert counts == {len(sampler)}  # a fixed number of batches, as DDP shards them
    short = [b for b in batches if lengths[b].max() < 3]
    assert short and min(len(b) for b in short) >= 60 // 3  # short utterances fill their batch


def test_the_effective_global_batch_is_logged(caplog):
    from ser_modules.asr.training import train_batches

    caplog.set_level("INFO")
    train_batches([1.0] * 100, {"batch_size": 20, "seed": 1}, 8)
    assert "batch_size 20 over 8 process(es): 3 utterances each per step, an effective global batch of 24" in caplog.text
    sampler = train_batches([2.0] * 100, {"batch_size": 20, "batch_seconds": 10, "seed": 1}, 8)
    assert len(sampler) == 20
    assert "at most 10 s of padded audio per process: 20 batches of 5.0 utterances" in caplog.text
    assert "an effective global batch of 40.0 utterances" in caplog.text
