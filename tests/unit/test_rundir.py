"""covidxray.rundir: the files of a run, refusing to replace one, and reading it back."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from covidxray.config import TrainConfig
from covidxray.errors import CovidXrayError
from covidxray.rundir import (
    BACKUP,
    CONFIG,
    METRICS,
    MODEL,
    REPLACED,
    REPORT,
    RUN_FILES,
    RUN_FOLDERS,
    SPLIT,
    STAGED,
    RunDir,
    write_csv,
)

#: A folder of the user's that is not a run (issue 12, 1): every name but notes.txt is one a run
#: or a temporary-file pattern could mistake for its own.
USER_FILES = {".env.tmpl": "SECRET=1", "config.json": '{"theme": "dark"}', "report.md": "# my report",
              "report.html": "<p>mine</p>", "history.csv": "year,event", "notes.txt": "mine"}


def write_user_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in USER_FILES.items():
        (folder / name).write_text(text)
    (folder / ".build.tmp_files").mkdir()
    (folder / ".build.tmp_files" / "x.o").write_text("mine")
    return folder


def user_files_intact(folder) -> bool:
    return all((folder / name).read_text() == text for name, text in USER_FILES.items()) and \
        (folder / ".build.tmp_files" / "x.o").read_text() == "mine"


def test_overwrite_removes_every_file_of_the_old_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for name in RUN_FILES:
        run.file(name).write_text("old")
    TrainConfig(data="d").resolve().save(run.file(CONFIG))  # what marks the folder a run's (issue 30)
    for name in RUN_FOLDERS:  # backup/, saved_model/, tensorboard/
        run.file(name).mkdir()
        (run.file(name) / "x").write_text("old")
    (run.path / ".model.0123456789ab.covidxray-tmp.keras").write_text("left by a killed process")
    (run.path / ".backup.covidxray-old").mkdir()
    (run.path / "notes.txt").write_text("mine")
    (run.path / ".env.tmpl").write_text("mine")  # hidden, and 'tmp' in the name, but not covidxray's
    (run.path / ".build.tmp_files").mkdir()
    with pytest.raises(CovidXrayError, match="--overwrite"):
        run.refuse_to_replace(overwrite=False)
    run.refuse_to_replace(overwrite=True)
    run.create()
    assert sorted(p.name for p in run.path.iterdir()) == [".build.tmp_files", ".env.tmpl", "notes.txt"]  # not ours


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(CovidXrayError, match="is a file"):
        RunDir(tmp_path / "run").refuse_to_replace()


def test_a_foreign_config_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CovidXrayError, match="config.json"):
        run.load_config()
    assert MODEL in RUN_FILES and METRICS in RUN_FILES


def test_an_interrupted_run_is_named_as_such(tmp_path):
    run = RunDir(tmp_path)
    run.refuse_to_replace()  # an empty folder: fine
    TrainConfig(data="d").resolve().save(run.file(CONFIG))
    run.file(BACKUP).mkdir()
    with pytest.raises(CovidXrayError, match="holds an interrupted run; continue it with covidxray train --resume"):
        run.refuse_to_replace()
    run.file(METRICS).write_text("{}")  # finished, and no model: nothing to refuse
    run.refuse_to_replace()


def test_require_and_load_config(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(CovidXrayError, match=f"{tmp_path / MODEL}: missing; is {tmp_path} a finished covidxray run"):
        run.require(MODEL)
    config = TrainConfig(data="d", task="binary").resolve()
    config.save(run.file(CONFIG))
    assert run.require(CONFIG) == tmp_path / CONFIG and run.load_config() == config


def test_write_json_and_csv_take_numpy_values(tmp_path):
    run = RunDir(tmp_path)
    path = run.write_json("m.json", {"n": np.int64(3), "p": np.float32(0.5), "a": np.arange(2)})
    assert json.loads(path.read_text()) == {"n": 3, "p": 0.5, "a": [0, 1]}
    with pytest.raises(TypeError, match="cannot write object as JSON"):
        run.write_json("bad.json", {"x": object()})
    write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"


def test_a_folder_that_is_not_a_run_is_refused_without_overwrite(tmp_path):
    run = RunDir(write_user_folder(tmp_path / "mine"))
    with pytest.raises(CovidXrayError, match=r"mine: not empty and not a covidxray run \(holds \.build\.tmp_files, "
                                             r"\.env\.tmpl, config\.json, history\.csv and 3 more\); .*--overwrite"):
        run.refuse_to_replace()
    run.remove_temporaries()  # what a resumed or new run does first: nothing of the user's goes
    assert user_files_intact(run.path)
    run.refuse_to_replace(overwrite=True)  # asked for: allowed


def test_folders_a_run_may_use_without_overwrite(tmp_path):
    RunDir(tmp_path / "new" / "run").refuse_to_replace()
    temporaries = RunDir(tmp_path / "temporaries")
    temporaries.path.mkdir()
    (temporaries.path / ".split.0123456789ab.covidxray-tmp.csv").write_text("left by a killed process")
    temporaries.refuse_to_replace()
    assert temporaries.entries() == []
    killed_early = RunDir(tmp_path / "killed-early")  # killed before its first epoch: config.json and split.csv
    killed_early.path.mkdir()
    TrainConfig(data="d").resolve().save(killed_early.file(CONFIG))
    killed_early.file(SPLIT).write_text("path,split\n")
    (killed_early.path / "notes.txt").write_text("mine")
    killed_early.refuse_to_replace()
    assert killed_early.is_run() and not RunDir(tmp_path / "new").is_run()


def test_out_under_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CovidXrayError, match="file is a file, not a folder"):
        RunDir(tmp_path / "file" / "run").refuse_to_replace()


def make_run(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL, CONFIG, SPLIT, REPORT, METRICS):
        (folder / name).write_text(text)
    return RunDir(folder)


def test_swap_in_replaces_the_runs_files_and_keeps_the_users(tmp_path):
    run = make_run(tmp_path / "run", "old")
    (run.path / "model.onnx").write_text("old export")  # of the old model: goes with it
    (run.path / "saved_model").mkdir()
    (run.path / "notes.txt").write_text("mine")
    staged = run.stage()
    assert staged.path == run.file(STAGED) and run.entries() == sorted([*run.run_entries(), "notes.txt"])
    make_run(staged.path, "new")
    run.swap_in(staged)
    assert sorted(p.name for p in run.path.iterdir()) == sorted([MODEL, CONFIG, SPLIT, REPORT, METRICS, "notes.txt"])
    assert all(run.file(name).read_text() == "new" for name in (MODEL, CONFIG, SPLIT, REPORT, METRICS))


@pytest.mark.parametrize("cut", ["complete, not moved", "half aside", "all aside, half moved in", "clean-up left"])
def test_a_swap_cut_short_is_finished(tmp_path, cut):
    run = make_run(tmp_path / "run", "old")
    (run.path / "notes.txt").write_text("mine")
    staged = make_run(run.stage().path, "new")
    aside = run.file(REPLACED)
    if cut != "complete, not moved":
        aside.mkdir()
        for name in (METRICS, MODEL):
            os.replace(run.file(name), aside / name)
    if cut in ("all aside, half moved in", "clean-up left"):
        for name in (CONFIG, SPLIT, REPORT):
            os.replace(run.file(name), aside / name)
        (aside / ".all-aside").touch()
        for name in (MODEL, CONFIG) if cut != "clean-up left" else (MODEL, CONFIG, SPLIT, REPORT, METRICS):
            os.replace(staged.file(name), run.file(name))
    run.refuse_to_replace(overwrite=True)  # finishes it, as train and resume do first
    assert sorted(p.name for p in run.path.iterdir()) == sorted([MODEL, CONFIG, SPLIT, REPORT, METRICS, "notes.txt"])
    assert all(run.file(name).read_text() == "new" for name in (MODEL, CONFIG, SPLIT, REPORT, METRICS))


def test_an_interrupted_replacement_is_named_and_found(tmp_path):
    run = make_run(tmp_path / "run", "old")
    staged = run.stage()
    staged.file(BACKUP).mkdir()
    assert run.interrupted_replacement().path == staged.path
    with pytest.raises(CovidXrayError, match=r"holds an interrupted run \(started with --overwrite, in "
                                             r"\.covidxray-staged\); continue it with covidxray train --resume"):
        run.refuse_to_replace()
    run.stage()  # --overwrite: a new replacement, the interrupted one given up
    assert run.interrupted_replacement() is None


@pytest.mark.parametrize("text, message", [
    ("path,label\nx.png,covid\n", "no 'split' column, so not a covidxray split; restore the run's own split.csv"),
    ("label\ncovid\n", "no 'path' or 'split' column"),
    ("path,split\nx.png,holdout\n", "unknown split 'holdout'"),
    ("", "unreadable"),
])
def test_read_split_refuses_a_file_that_is_not_a_split(tmp_path, text, message):
    (tmp_path / SPLIT).write_text(text)
    with pytest.raises(CovidXrayError, match=message) as raised:
        RunDir(tmp_path).read_split()
    assert str(raised.value).startswith(f"{tmp_path / SPLIT}: ")


def test_read_split_reads_paths_as_text(tmp_path):
    (tmp_path / SPLIT).write_text("path,label,split,patient_id\n001.png,covid,train,\n")
    table = RunDir(tmp_path).read_split()
    assert table.to_dict("records") == [{"path": "001.png", "label": "covid", "split": "train", "patient_id": ""}]


@pytest.mark.parametrize("text, message", [
    ("[]", "not a covidxray run configuration"),
    ('{"data": "d", "image_size": "big"}', "image_size must be int"),
    ('{"data": "d", "image_size": 8}', "--image-size must be in"),
    ('{"data": "d", "task": "binary", "classes": ["covid", "normal"]}', "no image_size"),
    ('{"data": "d", "image_size": 32, "classes": ["covid", "normal"]}', "are not those of the task three-class"),
    (b"\xff\xfe{}", "not a covidxray run configuration"),
])
def test_a_broken_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / CONFIG
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CovidXrayError, match=message) as raised:
        RunDir(tmp_path).load_config()
    assert str(raised.value).startswith(f"{path}: ") and "retrain the run" in str(raised.value)


def test_a_users_folder_holding_backup_is_not_a_run_and_overwrite_deletes_nothing(tmp_path):
    """Issue 30: backup/ (or model.keras) without a run's config.json is the user's: not called an
    interrupted run, no message suggests --overwrite, and --overwrite is refused too."""
    run = RunDir(write_user_folder(tmp_path / "thesis"))
    (run.path / BACKUP).mkdir()
    (run.path / BACKUP / "thesis.docx").write_text("two years of work")
    for overwrite in (False, True):
        with pytest.raises(CovidXrayError) as raised:
            run.refuse_to_replace(overwrite=overwrite)
        message = str(raised.value)
        assert "interrupted" not in message and "--overwrite" not in message and "--resume" not in message
        assert "not a covidxray run, and holds backup/, which a run writing here would replace; move it away" in message
    assert (run.path / BACKUP / "thesis.docx").read_text() == "two years of work" and user_files_intact(run.path)
    (run.path / BACKUP / "thesis.docx").rename(tmp_path / "thesis.docx")
    (run.path / BACKUP).rmdir()
    run.file(MODEL).write_text("the user's model")  # a model.keras alone is not a trained run either
    with pytest.raises(CovidXrayError, match="thesis: not empty and not a covidxray run"):
        run.refuse_to_replace()
    (tmp_path / "lungs").mkdir()  # a lung segmenter's run is marked by its segmenter.json
    (tmp_path / "lungs" / MODEL).write_text("x")
    (tmp_path / "lungs" / "segmenter.json").write_text("{}")
    with pytest.raises(CovidXrayError, match="already holds a trained run"):
        RunDir(tmp_path / "lungs").refuse_to_replace()


def test_a_link_or_fifo_of_a_run_files_name_is_refused_before_the_run(tmp_path):
    """Issue 30: found before any training, with or without --overwrite, and left as it was."""
    import os

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    TrainConfig(data="d").resolve().save(run.file(CONFIG))
    (tmp_path / "mine.md").write_text("the user's")
    run.file(REPORT).symlink_to(tmp_path / "mine.md")
    for overwrite in (False, True):
        with pytest.raises(CovidXrayError, match=r"report.md: is a symbolic link; a run replaces only its own"):
            run.refuse_to_replace(overwrite=overwrite)
    run.file(REPORT).unlink()
    os.mkfifo(run.file(SPLIT))
    with pytest.raises(CovidXrayError, match=r"split.csv: is a FIFO"):
        run.refuse_to_replace(overwrite=True)
    assert (tmp_path / "mine.md").read_text() == "the user's"


def test_a_resumed_run_must_read_the_images_of_its_split_in_the_same_order_and_split(tmp_path):
    from covidxray.errors import DatasetError
    from covidxray.rundir import SPLIT, RunDir

    run = RunDir(tmp_path / "run")
    run.create()
    saved = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "split": ["train", "validation", "test"]})
    write_csv(run.file(SPLIT), saved)
    run.check_same_split(saved.assign(label="normal"), "data")  # other columns do not matter
    for changed in (saved.iloc[[1, 0, 2]], saved.assign(split=["train", "train", "test"]), saved.iloc[:2]):
        with pytest.raises(DatasetError, match=r"^data-a, data-b: the images differ from those in .*split\.csv; "
                                               r"resume needs the same datasets"):
            run.check_same_split(changed, "data-a, data-b")
