"""Faults a new user or a cluster meets, and what the toolkit guarantees about them (README,
"Reliability"): bad input stops with a one-line message naming the file or key; finished work is
never lost; a moved experiment is still finished; a signal stops a stage and its workers and a rerun
resumes to the results of an uninterrupted run; stages 3-5 share their work over ``--ngpu`` devices
and stage 5 over a cluster (submitit).

One tiny ``ctc_transfer`` experiment (DeepSpeech2 of one GRU of 16, a fine-tuned copy per fold, two
SER variants on two folds) is run once, uninterrupted; every other test works on a copy of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from background import starts
from ser_modules.data.audio import AudioReadError, load_audio
from ser_modules.data.corpus import apply_label_map, resolve_label_map
from ser_modules.utils.fileio import ManifestError
from ser_modules.utils.hparams import HparamsError, check_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "recipes", "ctc_transfer", "conf")
TINY = [
    "asr.n_epochs=2", "asr.rnn_layers=1", "asr.rnn_hidden=16", "asr.conv_channels=2", "asr.decoders=[greedy]",
    "adapt.variants=[finetuned]", "adapt.epochs_per_stage=2",
    "dump.dtype=float32", "dump.augmented_copies=1",
    "ser.variants=[{name: MP-1, type: mp, asr: pretrained, layer: gru1, max_epochs: 3},"
    " {name: baseline-8, type: baseline, hidden: 8, max_epochs: 2}]",
    "score.reference=baseline-8", "score.tsne=False", "score.loudness=False", "score.chance_runs=2",
]
SER_VARIANTS = ("MP-1", "baseline-8")
FOLDS = ("session1", "session2")


def run(exp, tiny_demo, *args, env=None, check=True, asr_root=None) -> subprocess.CompletedProcess:
    """``recipes/ctc_transfer/run.sh`` on the tiny demo corpus (or another LibriSpeech tree) with the tiny models."""
    cmd = ["bash", os.path.join(REPO, "recipes", "ctc_transfer", "run.sh"), "--exp-dir", str(exp), "--size", "demo",
           "--emotion-corpus", "iemocap", "--emotion-root", tiny_demo["iemocap"], "--asr-corpus", "librispeech",
           "--asr-root", asr_root or tiny_demo["librispeech"], "--nj", "1", "--folds", "loso", *TINY, *args]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """The run failed with a message holding every needle, and no traceback."""
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


@starts("base")
def _start_base(bg, session):
    demo, exp = bg.start("tiny_demo"), bg.tmp.mktemp("faults") / "base"

    def build():
        run(exp, demo.result())
        return exp

    return bg.run(build)


@pytest.fixture(scope="module")
def base(background):
    """The uninterrupted experiment, stages 1-6 (built in the background, tests/background.py)."""
    return background.start("base").result()


def copy_experiment(base, tmp_path, name="exp"):
    exp = tmp_path / name
    shutil.copytree(base, exp, symlinks=True)
    return exp


def write_wav(path, samples, sr=16000):
    sf.write(str(path), np.asarray(samples, dtype=np.float32), sr, subtype="FLOAT")
    return str(path)


# ----------------------------------------------------------------------------------------------
# Bad input: a one-line message naming the file or key, before anything is lost


def test_an_override_of_the_wrong_type_is_refused_before_any_stage_runs(tiny_demo, tmp_path):
    with pytest.raises(HparamsError, match=r"override ser.lr='abc': .*ser.yaml has lr: 0.0001 \(a number\)"):
        check_overrides(CONF, ["ser.lr=abc"])
    with pytest.raises(HparamsError, match=r"asr.n_epochs=1.5: .*n_epochs: \d+ \(an integer\)"):
        check_overrides(CONF, ["asr.n_epochs=1.5"])
    with pytest.raises(HparamsError, match=r"dropout=\[0.1\]: .* \(a number\), the override is a list"):
        check_overrides(CONF, ["dropout=[0.1]"])  # an unprefixed key is checked in every file that has it
    check_overrides(CONF, ["lr=1", "ser.early_stop_patience=3", "asr.decoders=[greedy, beam]"])  # int for float, null
    proc = run(tmp_path / "exp", tiny_demo, "ser.lr=abc", check=False)
    one_line_error(proc, "override ser.lr='abc'", "ser.yaml has lr: 0.0001")
    assert not (tmp_path / "exp" / "data").exists()  # refused before stage 1


@pytest.mark.parametrize("args,message", [
    (["--stage", "0"], "must be stage numbers 1-6, got '0'"),
    (["--stop-stage", "7"], "must be stage numbers 1-6, got '7'"),
    (["--stage", "5", "--stop-stage", "3"], "--stage 5 is after --stop-stage 3"),
])
def test_stage_numbers_are_checked(tiny_demo, tmp_path, args, message):
    one_line_error(run(tmp_path / "exp", tiny_demo, *args, check=False), message)


def test_audio_that_cannot_be_heard_is_an_error_naming_the_file(tmp_path):
    t = np.arange(1600) / 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * t)
    with pytest.raises(AudioReadError, match=r"nan.wav: 3 of 1600 samples are not finite"):
        load_audio(write_wav(tmp_path / "nan.wav", np.where(t < 3 / 16000, np.nan, tone)))
    with pytest.raises(AudioReadError, match=r"inf.wav: 1 of 1600 samples are not finite"):
        load_audio(write_wav(tmp_path / "inf.wav", np.where(t == 0, np.inf, tone)))
    with pytest.raises(AudioReadError, match=r"zero.wav: every sample is zero"):
        load_audio(write_wav(tmp_path / "zero.wav", np.zeros(1600)))
    assert load_audio(write_wav(tmp_path / "ok.wav", tone)).shape == (1600,)


def test_inference_reports_unusable_audio_per_file(base, tmp_path):
    from ser_modules.infer import main as infer_main
    from ser_modules.inference.recognizer import EmotionRecognizer

    t = np.arange(8000) / 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * t)
    files = {"nan": write_wav(tmp_path / "nan.wav", np.full(8000, np.nan)),
             "inf": write_wav(tmp_path / "inf.wav", np.where(t < 0.1, np.inf, tone)),
             "zero": write_wav(tmp_path / "zero.wav", np.zeros(8000)),
             "short": write_wav(tmp_path / "short.wav", tone[:160]),  # 10 ms: less than one 20 ms window
             "ok": write_wav(tmp_path / "ok.wav", tone)}
    for variant in SER_VARIANTS:
        rec = EmotionRecognizer.from_experiment(str(base), variant)
        rows = {name: row for name, row in zip(files, rec.predict_files(list(files.values())))}
        assert rows["ok"]["status"] == "ok" and rows["ok"]["emotion"] in rec.classes
        assert sum(rows["ok"][f"p_{c}"] for c in rec.classes) == pytest.approx(1, abs=1e-4)
        for name, message in [("nan", "not finite"), ("inf", "not finite"), ("zero", "every sample is zero"),
                              ("short", "shorter than the model's minimum of 20.0 ms")]:
            row = rows[name]
            assert row["status"] == "error" and row["emotion"] == "", (name, row)
            assert files[name] in row["error"] and message in row["error"], (name, row)
    assert infer_main([str(base), files["nan"], files["ok"], "--out", str(tmp_path / "out.csv")]) == 1


def test_stage4_stops_at_an_unusable_utterance_with_one_line(base, tiny_demo, tmp_path):
    exp = copy_experiment(base, tmp_path)
    shutil.rmtree(exp / "dump")
    bad = write_wav(tmp_path / "nan.wav", np.full(8000, np.nan))
    first = pd.read_csv(exp / "data" / "emotion" / "lakomkin2018" / "manifest.csv", dtype=str)["ID"].iloc[0]
    turns_csv = exp / "data" / "emotion" / "turns.csv"
    turns = pd.read_csv(turns_csv, keep_default_na=False, dtype=str)
    turns.loc[turns["ID"] == first, "wav"] = bad
    turns.to_csv(turns_csv, index=False)
    one_line_error(run(exp, tiny_demo, "--stage", "4", "--stop-stage", "4", check=False), f"{bad}: 8000 of 8000")
    turns.loc[turns["ID"] == first, ["wav", "duration"]] = [write_wav(tmp_path / "short.wav", np.full(100, 0.1)),
                                                            "0.00625"]
    turns.to_csv(turns_csv, index=False)
    one_line_error(run(exp, tiny_demo, "--stage", "4", "--stop-stage", "4", check=False),
                   "short.wav: utterance", "6.2 ms, shorter than the model's minimum of 20.0 ms")


def test_label_maps_keep_two_classes_or_fail():
    frame = pd.DataFrame({"ID": list("abcdef"), "label": ["ang", "hap", "neu", "sad", "exc", "fru"]})
    mapped = apply_label_map(frame, resolve_label_map("iemocap4"))  # IEMOCAP's short codes
    assert mapped["emotion"].tolist() == ["ang", "hap", "neu", "sad", "hap"]
    words = pd.DataFrame({"ID": list("abc"), "label": ["Angry", "SAD", "calm"]})  # any letter case
    assert apply_label_map(words, resolve_label_map("iemocap4"))["emotion"].tolist() == ["ang", "sad", "neu"]
    with pytest.raises(ManifestError, match=r"mycorpus: 1 class\(es\) \['sad'\] left .*labels in the corpus: "
                                            r"\['happy', 'sad'\]"):
        apply_label_map(pd.DataFrame({"ID": list("ab"), "label": ["happy", "sad"]}), {"sad": "sad"}, corpus="mycorpus")
    with pytest.raises(ManifestError, match=r"0 class\(es\)"):
        apply_label_map(frame, {"calm": "neu"})


def test_a_preparer_error_is_one_line(tmp_path):
    csv = tmp_path / "list.csv"
    for name in ("a", "b"):
        write_wav(tmp_path / f"{name}.wav", np.full(1600, 0.1))
    csv.write_text("path,speaker,label\na.wav,alice,sad\nb.wav,bob,sad\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "local", "prepare_csv.py"), "--root", str(csv), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    one_line_error(proc, "1 class(es) ['sad'] left")


# ----------------------------------------------------------------------------------------------
# Finished work is never lost; stage 6 never scores an incomplete variant silently


def finished_runs(exp) -> dict[str, bytes]:
    """Every finished SER run's predictions (path relative to ``ser/`` -> bytes)."""
    out = {}
    for variant in SER_VARIANTS:
        for fold in FOLDS:
            run_dir = exp / "ser" / variant / fold / "run0"
            if (run_dir / "predictions.csv").is_file() and (run_dir / "model.pt").is_file():
                out[f"{variant}/{fold}"] = (run_dir / "predictions.csv").read_bytes()
    return out


def work_folders(exp) -> list[str]:
    """Unfinished work left in the experiment: hidden work folders and interrupted dumps."""
    return sorted(os.path.relpath(os.path.join(d, n), exp) for d, dirs, _ in os.walk(exp) for n in dirs
                  if n.endswith(".partial") or n.endswith(".old") or ".partial-" in n or ".aside-" in n)


def test_a_changed_configuration_keeps_finished_runs_until_their_replacement_is_complete(base, tiny_demo, tmp_path):
    exp = copy_experiment(base, tmp_path)
    before = finished_runs(exp)
    assert len(before) == 4
    # The new configuration retrains every run; the stage is killed after its first finished run.
    proc = run(exp, tiny_demo, "ser.dropout=0.5", "--stage", "5", "--stop-stage", "5", check=False,
               env={"SER_FAULT": "job:1:SIGKILL"})
    assert proc.returncode != 0
    after = finished_runs(exp)
    assert len(after) == 4  # nothing deleted: one run replaced, three as they were
    assert sum(after[k] != before[k] for k in before) == 1
    run(exp, tiny_demo, "ser.dropout=0.5", "--stage", "5", "--stop-stage", "5")
    assert len(finished_runs(exp)) == 4 and work_folders(exp) == []


def test_stage6_refuses_a_variant_with_fewer_folds_x_runs_than_planned(base, tiny_demo, tmp_path):
    exp = copy_experiment(base, tmp_path)
    shutil.rmtree(exp / "ser" / "MP-1" / "session2")
    proc = run(exp, tiny_demo, "--stage", "6", check=False)
    one_line_error(proc, "MP-1: predictions of 1 of the 2 planned (fold, run) pairs", "score.allow_incomplete=True")
    run(exp, tiny_demo, "--stage", "6", "score.allow_incomplete=True")
    results = (exp / "RESULTS.md").read_text()
    assert "**MP-1 (incomplete)**" in results and "| 1 × 1 |" in results
    assert "baseline-8 (incomplete)" not in results


# ----------------------------------------------------------------------------------------------
# A moved experiment is still finished, and answers inference


MOVED_OUTPUTS = ["asr/model.pt", "adapt/finetuned/session1/model.pt", "adapt/pretrained/session2/inputs.json",
                 *[f"ser/{v}/{f}/run0/predictions.csv" for v in SER_VARIANTS for f in FOLDS]]


def move_and_rerun(base, tiny_demo, root):
    """A copy of the experiment moved to another folder (another depth), then stages 1-6 rerun there."""
    moved = root / "b" / "elsewhere"
    moved.parent.mkdir(parents=True)
    shutil.move(str(copy_experiment(base, root / "a")), str(moved))
    stamps = {p: os.stat(moved / p).st_mtime_ns for p in MOVED_OUTPUTS}
    stores = sorted(os.listdir(moved / "dump" / "pretrained"))
    return moved, stamps, stores, run(moved, tiny_demo, check=False)


def test_a_moved_experiment_reruns_every_stage_as_already_done_and_answers_inference(base, scenarios):
    from ser_modules.inference.recognizer import EmotionRecognizer

    moved, stamps, stores, proc = scenarios["moved"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage 1: data already prepared" in proc.stderr
    assert "stage 2 already finished with this configuration" in proc.stderr
    assert "reusing representation store" in proc.stderr
    assert "stage 5: 4 of 4 trainings already finished" in proc.stderr
    assert {p: os.stat(moved / p).st_mtime_ns for p in MOVED_OUTPUTS} == stamps  # nothing redone
    assert sorted(os.listdir(moved / "dump" / "pretrained")) == stores
    assert str(base) not in (moved / "dump" / "stores_lakomkin2018.json").read_text()
    assert str(base) not in (moved / "adapt" / "finetuned" / "session1" / "model.json").read_text()
    manifest = pd.read_csv(moved / "data" / "emotion" / "lakomkin2018" / "manifest.csv", keep_default_na=False)
    stage5 = pd.read_csv(moved / "ser" / "MP-1" / "session1" / "run0" / "predictions.csv", keep_default_na=False)
    wav = dict(zip(manifest["ID"], manifest["wav"]))[stage5["ID"].iloc[0]]
    row = EmotionRecognizer.from_experiment(str(moved), "MP-1", fold="session1").predict_files([wav])[0]
    assert row["status"] == "ok" and row["emotion"] == stage5["predicted"].iloc[0]


# ----------------------------------------------------------------------------------------------
# Signals: a kill inside stages 2-5, then a rerun equal to the uninterrupted run


def stage_outputs_equal(stage: int, exp, base) -> None:
    if stage == 2:
        files = ["asr/model.pt"]
    elif stage == 3:
        files = [f"adapt/finetuned/{f}/model.pt" for f in FOLDS]
    elif stage == 4:
        files = [os.path.relpath(os.path.join(d, n), base) for d, _, names in os.walk(base / "dump")
                 for n in names if n.endswith(".bin")]
        assert len(files) >= 3 and sorted(files) == sorted(
            os.path.relpath(os.path.join(d, n), exp) for d, _, names in os.walk(exp / "dump") for n in names
            if n.endswith(".bin"))
    else:
        files = [f"ser/{v}/{f}/run0/predictions.csv" for v in SER_VARIANTS for f in FOLDS]
    for path in files:
        if path.endswith(".pt"):
            got, want = torch.load(exp / path), torch.load(base / path)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), path
        else:
            assert (exp / path).read_bytes() == (base / path).read_bytes(), path


def processes_with(token: str) -> list[int]:
    """Processes whose environment holds ``token`` (the killed stage and any worker it left)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if token.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


STAGE_FOLDER = {2: "asr", 3: "adapt", 4: "dump", 5: "ser"}
# Where each stage is killed: SIGKILL inside a job of a one-process stage (an epoch of stage 2's ASR
# training, of the second fold's adaptation in stage 3, of an MP-1 training in stage 5 after both
# baseline-8 runs; an utterance of the first stage-4 store); SIGTERM to the main process of a stage
# whose jobs run in 2 worker processes (after its first job, or during the handcrafted features'
# pool), or of stage 2 after an epoch. Stage 5's SIGTERM comes from the runner on Ctrl-C (below).
KILLS = {
    (2, "SIGKILL"): ("epoch:1", 1), (3, "SIGKILL"): ("epoch:3", 1), (4, "SIGKILL"): ("utterance:5", 1),
    (5, "SIGKILL"): ("epoch:5", 1),
    (2, "SIGTERM"): ("epoch:1", 1), (3, "SIGTERM"): ("job:1", 2), (4, "SIGTERM"): ("handcrafted", 2),
}


@dataclass
class Killed:
    exp: object
    killed: subprocess.CompletedProcess
    survivors: list  # processes of the killed run still alive after it ended
    left: list  # work folders left by the kill
    rerun: subprocess.CompletedProcess


def kill_and_rerun(base, tiny_demo, root, stage: int, signal_name: str) -> Killed:
    exp = copy_experiment(base, root, f"stage{stage}-{signal_name}")
    shutil.rmtree(exp / STAGE_FOLDER[stage])
    point, nj = KILLS[(stage, signal_name)]
    if point == "handcrafted":  # past the ASR store's utterances, into the handcrafted features' pool
        point = f"utterance:{len(pd.read_csv(base / 'dump' / 'utterances_lakomkin2018.csv')) + 3}"
    token = f"SER_FAULT_TEST_{os.getpid()}_{stage}_{signal_name}"
    only = ["--stage", str(stage), "--stop-stage", str(stage)]
    killed = run(exp, tiny_demo, *only, "--nj", str(nj), check=False,
                 env={"SER_FAULT": f"{point}:{signal_name}", token: "1"})
    survivors, left = processes_with(token), work_folders(exp)
    return Killed(exp, killed, survivors, left, run(exp, tiny_demo, *only, check=False))


def scale_out(base, tiny_demo, root, name: str, stage: int, *args: str):
    """Stages ``stage``-6 redone on a copy of the base experiment with other parallelism options."""
    exp = copy_experiment(base, root, name)
    for folder in [STAGE_FOLDER[s] for s in range(stage, 6)]:
        shutil.rmtree(exp / folder)
    return exp, run(exp, tiny_demo, "--stage", str(stage), *args, check=False)


@starts("scenarios")
def _start_scenarios(bg, session):
    """The runs of the kill, relocation and scale-out tests, each on a copy of the base experiment, in the
    background two at a time (each is mostly one single-threaded process)."""
    demo, base_run, root = bg.start("tiny_demo"), bg.start("base"), bg.tmp.mktemp("scenarios")

    def scenario(fn, *args):
        return bg.run(lambda: fn(base_run.result(), demo.result(), root, *args))

    futures = {"sigint": scenario(interrupt_runner),
               "slurm": scenario(scale_out, "slurm", 5, "--launcher", "submitit-local", "--slurm-partition", "gpu",
                                 "--slurm-time", "30", "--slurm-gres", "gpu:1"),
               "ngpu2": scenario(scale_out, "ngpu2", 3, "--ngpu", "2"),
               "moved": scenario(move_and_rerun)}
    futures.update({key: scenario(kill_and_rerun, *key) for key in KILLS})
    return futures


@pytest.fixture(scope="module")
def scenarios(background):
    return {key: f.result() for key, f in background.start("scenarios").items()}


@pytest.mark.parametrize("stage,signal_name", list(KILLS), ids=[f"stage{s}-{n}" for s, n in KILLS])
def test_a_killed_stage_resumes_to_the_uninterrupted_results(base, scenarios, stage, signal_name):
    k = scenarios[(stage, signal_name)]
    assert k.killed.returncode != 0, k.killed.stderr[-2000:]
    assert k.survivors == []  # no worker outlives its stage
    if signal_name == "SIGTERM":
        assert "Traceback" not in k.killed.stderr, k.killed.stderr[-3000:]
        assert not [p for p in k.left if ".partial-" in p]  # an interrupted dump cleans up
    assert k.rerun.returncode == 0, k.rerun.stderr[-3000:]
    stage_outputs_equal(stage, k.exp, base)
    assert work_folders(k.exp) == []


def interrupt_runner(base, tiny_demo, root) -> dict:
    """Ctrl-C (SIGINT) to ``run.sh`` while stage 5 trains in 2 worker processes, then a rerun."""
    import signal
    import time

    exp = copy_experiment(base, root, "sigint")
    shutil.rmtree(exp / "ser")
    token = f"SER_FAULT_TEST_{os.getpid()}_sigint"
    cmd = ["bash", os.path.join(REPO, "recipes", "ctc_transfer", "run.sh"), "--exp-dir", str(exp), "--size", "demo",
           "--emotion-corpus", "iemocap", "--emotion-root", tiny_demo["iemocap"], "--asr-corpus", "librispeech",
           "--asr-root", tiny_demo["librispeech"], "--folds", "loso", *TINY, "--stage", "5", "--stop-stage", "5",
           "--nj", "2"]
    # The stage stops itself (SIGSTOP) after its first finished job: the runner is then sure to be waiting for it;
    # 1 s more per epoch keeps the other jobs running meanwhile.
    runner = subprocess.Popen(cmd, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                                        "SER_FAULT": "job:1:SIGSTOP", "SER_FAULT_SLOW": "epoch:1", token: "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stopped_stage() -> bool:
        for pid in processes_with(token):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "T":
                        return True
            except OSError:
                continue
        return False

    while not stopped_stage() and runner.poll() is None:
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=600)
    return {"exp": exp, "returncode": runner.returncode, "stderr": stderr, "survivors": processes_with(token),
            "finished": len(finished_runs(exp)), "rerun": run(exp, tiny_demo, "--stage", "5", "--stop-stage", "5",
                                                               check=False)}


def test_ctrl_c_to_the_runner_stops_stage5_and_its_workers_and_a_rerun_resumes(base, scenarios):
    r = scenarios["sigint"]
    assert r["returncode"] == 130 and "stopped by SIGINT: finished work is kept" in r["stderr"], r["stderr"][-3000:]
    assert "Traceback" not in r["stderr"]
    assert r["survivors"] == []
    assert 1 <= r["finished"] < 4
    assert r["rerun"].returncode == 0, r["rerun"].stderr[-3000:]
    stage_outputs_equal(5, r["exp"], base)
    assert work_folders(r["exp"]) == []


# ----------------------------------------------------------------------------------------------
# Scale-out: --ngpu devices share the jobs of stages 3-5; stage 5 through submitit


def results_equal(exp, base) -> None:
    got, want = pd.read_csv(exp / "results.csv"), pd.read_csv(base / "results.csv")
    assert got["model"].tolist() == want["model"].tolist()
    numeric = [c for c in want.columns if c.endswith(("_mean", "_std")) or c.startswith("p_")]
    np.testing.assert_allclose(got[numeric].to_numpy(float), want[numeric].to_numpy(float), atol=1e-6)
    asr = [pd.read_csv(e / "asr_results.csv").sort_values(["stage", "split"]).reset_index(drop=True)
           for e in (exp, base)]
    np.testing.assert_allclose(asr[0][["WER", "CER"]].to_numpy(float), asr[1][["WER", "CER"]].to_numpy(float))


def test_ngpu_2_shares_stages_3_to_5_and_equals_ngpu_1(base, scenarios):
    exp, proc = scenarios["ngpu2"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two worker processes (the CPU stand-in for two devices) shared the adaptations and the trainings.
    assert "stage 3: 4 jobs (pretrained scoring and ['finetuned'] x 2 folds), 2 in parallel" in proc.stderr
    assert "4 trainings, classes ['ang', 'hap', 'sad'], 2 job(s) in parallel on cpu" in proc.stderr
    for stage in (3, 4, 5):
        stage_outputs_equal(stage, exp, base)
    results_equal(exp, base)


def test_stage5_through_submitit_equals_the_process_pool(base, scenarios):
    exp, proc = scenarios["slurm"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 trainings as submitit-local jobs (partition gpu, 30 min, gres gpu:1)" in proc.stderr
    jobs = exp / "logs" / "stage5_jobs"
    assert len([n for n in os.listdir(jobs) if n.endswith("_result.pkl")]) == 4  # one submitit job per training
    stage_outputs_equal(5, exp, base)
    results_equal(exp, base)


def test_ngpu_gives_each_worker_one_device(monkeypatch):
    from ser_modules.utils.jobs import job_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert job_devices("cuda", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert job_devices("cuda:1", 1) == ["cuda:1"] and job_devices("cpu", 2) == ["cpu"]
