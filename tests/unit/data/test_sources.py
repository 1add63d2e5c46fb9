"""Tests for covidxray.data.sources: class folders, CSV manifests, the ieee8023 layout, tasks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from covidxray.data.sources import COLUMNS, confounded_classes, confounding_warning, load_dataset, select_task
from covidxray.errors import DatasetError
from covidxray.labels import TASKS
from helpers import gray, shared_data_dir, write_class_folders, write_image


@pytest.fixture
def shared_data() -> Path:
    return shared_data_dir()


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return {label: int(n) for label, n in frame["label"].value_counts().items()}


# --- class folders ---------------------------------------------------------------------------


def test_class_folders_with_darkcovidnet_names(tmp_path):
    root = tmp_path / "X-Ray Image DataSet"
    written = write_class_folders(root, {"Covid-19": 2, "No_findings": 3, "Pneumonia": 1})
    frame = load_dataset(root)
    assert list(frame.columns) == COLUMNS
    assert _counts(frame) == {"covid": 2, "normal": 3, "pneumonia": 1}
    expected_paths = {str(p.resolve()) for paths in written.values() for p in paths}
    assert set(frame["path"]) == expected_paths
    assert all(Path(p).is_absolute() for p in frame["path"])
    assert set(frame["patient_id"]) == {""}
    assert set(frame["source"]) == {"X-Ray Image DataSet"}
    assert set(frame.loc[frame["label"] == "normal", "original_label"]) == {"No_findings"}


def test_class_folders_with_pyimagesearch_names(tmp_path):
    write_class_folders(tmp_path / "dataset", {"covid": 3, "normal": 2}, suffix=".jpg")
    frame = load_dataset(tmp_path / "dataset")
    assert _counts(frame) == {"covid": 3, "normal": 2}
    assert set(frame["original_label"]) == {"covid", "normal"}


def test_nested_subfolders_are_read(tmp_path):
    root = tmp_path / "data"
    write_image(root / "covid" / "a.png", gray(1))
    write_image(root / "covid" / "patient1" / "day2" / "b.png", gray(2))
    write_image(root / "normal" / "sub" / "c.jpeg", gray(3))
    frame = load_dataset(root)
    assert _counts(frame) == {"covid": 2, "normal": 1}
    assert str((root / "covid" / "patient1" / "day2" / "b.png").resolve()) in set(frame["path"])


def test_non_image_and_hidden_files_are_ignored(tmp_path):
    root = tmp_path / "data"
    write_class_folders(root, {"covid": 1, "normal": 1})
    (root / "covid" / "notes.txt").write_text("x")
    (root / "covid" / "labels.csv").write_text("a,b\n")
    (root / "covid" / ".DS_Store").write_bytes(b"\0")
    write_image(root / "normal" / ".hidden.png", gray(9))
    (root / ".git").mkdir()  # hidden folders are not classes
    frame = load_dataset(root)
    assert len(frame) == 2
    assert all(Path(p).suffix == ".png" and not Path(p).name.startswith(".") for p in frame["path"])


def test_unknown_class_folder_raises_naming_it(tmp_path):
    root = tmp_path / "data"
    write_class_folders(root, {"covid": 1, "tuberculosis": 1})
    with pytest.raises(DatasetError) as raised:
        load_dataset(root)
    message = str(raised.value)
    assert str(root / "tuberculosis") in message
    assert "unknown label 'tuberculosis'" in message


def test_empty_class_folder_raises_naming_it(tmp_path):
    root = tmp_path / "data"
    write_class_folders(root, {"covid": 1})
    (root / "normal").mkdir()
    (root / "normal" / "readme.txt").write_text("images go here")  # no image: still empty
    with pytest.raises(DatasetError) as raised:
        load_dataset(root)
    message = str(raised.value)
    assert str(root / "normal") in message
    assert "empty" in message


def test_loose_images_without_class_folders_explain_the_layout(tmp_path):
    root = tmp_path / "loose"
    for i in range(3):
        write_image(root / f"x{i}.png", gray(i))
    with pytest.raises(DatasetError) as raised:
        load_dataset(root)
    message = str(raised.value)
    assert str(root) in message
    assert "<class>/<image>" in message
    assert "path,label" in message


def test_missing_dataset_path_raises(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")


def test_non_csv_file_raises(tmp_path):
    path = write_image(tmp_path / "x.png", gray(0))
    with pytest.raises(DatasetError, match=r"\.csv manifest"):
        load_dataset(path)


# --- CSV manifests ---------------------------------------------------------------------------


def _manifest_dataset(root: Path) -> Path:
    write_image(root / "img" / "a.png", gray(1))
    write_image(root / "img" / "b.png", gray(2))
    write_image(root / "other" / "c.jpg", gray(3))
    (root / "list.csv").write_text(
        "path,label,patient_id,source\n"
        "img/a.png,Covid-19,p1,hospital-a\n"
        "img/b.png,No Finding,p2,hospital-b\n"
        "other/c.jpg,pneumonia,p2,hospital-b\n"
    )
    return root / "list.csv"


def test_csv_manifest_with_relative_paths_and_columns(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    frame = load_dataset(csv_path)
    assert list(frame.columns) == COLUMNS
    assert list(frame["path"]) == [str((tmp_path / "ds" / p).resolve()) for p in ("img/a.png", "img/b.png", "other/c.jpg")]
    assert list(frame["label"]) == ["covid", "normal", "pneumonia"]
    assert list(frame["patient_id"]) == ["p1", "p2", "p2"]
    assert list(frame["source"]) == ["hospital-a", "hospital-b", "hospital-b"]
    assert list(frame["original_label"]) == ["Covid-19", "No Finding", "pneumonia"]


def test_manifest_csv_in_a_folder_is_used(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root, {"covid": 1, "normal": 1})  # would be read as class folders ...
    (root / "manifest.csv").write_text("path,label\ncovid/img0.png,covid\n")  # ... but the manifest wins
    frame = load_dataset(root)
    assert list(frame["path"]) == [str((root / "covid" / "img0.png").resolve())]
    assert list(frame["patient_id"]) == [""]
    assert list(frame["source"]) == ["ds"]  # without a source column: the folder's name


def test_csv_with_absolute_paths(tmp_path):
    image = write_image(tmp_path / "images" / "x.png", gray(1))
    csv_path = tmp_path / "elsewhere" / "m.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(f"label,path\nnormal,{image}\n")
    frame = load_dataset(csv_path)
    assert list(frame["path"]) == [str(image)]
    assert list(frame["label"]) == ["normal"]


def test_csv_with_unknown_label_names_csv_and_row(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    csv_path.write_text(
        "path,label\n"
        "img/a.png,covid\n"
        "img/b.png,tuberculosis\n"
    )
    with pytest.raises(DatasetError) as raised:
        load_dataset(csv_path)
    message = str(raised.value)
    assert str(csv_path) in message
    assert "row 3" in message  # line 3 of the file: header, a.png, b.png
    assert "'tuberculosis'" in message


@pytest.mark.parametrize(("header", "missing"), [("path,patient_id", "label"), ("file,label", "path")])
def test_csv_missing_a_column(tmp_path, header, missing):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(f"{header}\nx.png,covid\n")
    with pytest.raises(DatasetError) as raised:
        load_dataset(csv_path)
    message = str(raised.value)
    assert str(csv_path) in message
    assert f"missing column(s) {missing}" in message


def test_csv_listing_a_missing_file_names_it(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "img" / "b.png").unlink()
    with pytest.raises(DatasetError) as raised:
        load_dataset(csv_path)
    message = str(raised.value)
    assert str((tmp_path / "ds" / "img" / "b.png").resolve()) in message
    assert str(csv_path) in message
    assert "a.png" not in message


def test_empty_csv_raises(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label\n")
    with pytest.raises(DatasetError, match="no labelled images"):
        load_dataset(csv_path)


# --- ieee8023 layout -------------------------------------------------------------------------

IEEE_ROWS = [
    # patientid, finding, view, modality, filename, kept as
    ("1", "COVID-19", "PA", "X-ray", "a.png", "covid"),
    ("1", "COVID-19", "L", "X-ray", "a-lateral.png", None),  # lateral view
    ("2", "COVID-19, ARDS", "AP Supine", "X-ray", "b.jpg", "covid"),
    ("3", "No Finding", "AP", "X-ray", "c.png", "normal"),
    ("4", "Pneumonia/Bacterial/Klebsiella", "PA", "X-ray", "d.png", "pneumonia"),
    ("5", "SARS", "AP semi erect", "X-ray", "e.png", "pneumonia"),
    ("6", "COVID-19", "Axial", "CT", "f.png", None),  # CT
    ("7", "COVID-19", "PA", "CT", "g.png", None),  # CT, even with a frontal-sounding view
    ("8", "todo", "PA", "X-ray", "h.png", None),  # unknown finding
]


def _ieee8023(root: Path) -> Path:
    lines = ["patientid,offset,finding,view,modality,filename"]
    for i, (patient, finding, view, modality, filename, _) in enumerate(IEEE_ROWS):
        write_image(root / "images" / filename, gray(100 + i))
        finding = f'"{finding}"' if "," in finding else finding
        lines.append(f"{patient},0,{finding},{view},{modality},{filename}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ieee8023_layout_keeps_frontal_xrays_and_maps_findings(tmp_path, caplog):
    root = _ieee8023(tmp_path / "covid-chestxray-dataset")
    with caplog.at_level(logging.INFO, logger="covidxray.data.sources"):
        frame = load_dataset(root)
    kept = [(row[4], row[5], row[0]) for row in IEEE_ROWS if row[5] is not None]
    assert list(frame.columns) == COLUMNS
    assert list(frame["path"]) == [str((root / "images" / name).resolve()) for name, _, _ in kept]
    assert list(frame["label"]) == [label for _, label, _ in kept]
    assert list(frame["patient_id"]) == [f"ieee8023-{patient}" for _, _, patient in kept]
    assert set(frame["source"]) == {"ieee8023"}
    assert list(frame["original_label"]) == ["COVID-19", "COVID-19, ARDS", "No Finding",
                                             "Pneumonia/Bacterial/Klebsiella", "SARS"]
    assert "todo" in caplog.text  # the skipped finding is reported


def test_ieee8023_missing_image_names_it(tmp_path):
    root = _ieee8023(tmp_path / "ieee")
    (root / "images" / "c.png").unlink()
    with pytest.raises(DatasetError) as raised:
        load_dataset(root)
    assert str((root / "images" / "c.png").resolve()) in str(raised.value)


def test_ieee8023_missing_column(tmp_path):
    root = tmp_path / "ieee"
    write_image(root / "images" / "a.png", gray(0))
    (root / "metadata.csv").write_text("patientid,view,filename\n1,PA,a.png\n")
    with pytest.raises(DatasetError, match="missing column.*finding"):
        load_dataset(root)


def _jsrt(root: Path, rows: list[tuple[str, str]]) -> Path:
    for i, (filename, _) in enumerate(rows):
        write_image(root / "images" / filename, gray(50 + i))
    (root / "metadata.csv").write_text("filename,nodule\n" + "".join(f"{f},{n}\n" for f, n in rows))
    return root


def test_jsrt_films_without_a_nodule_are_normal_and_nodule_films_are_left_out(tmp_path, caplog):
    root = _jsrt(tmp_path / "jsrt", [("JPCLN001.png", "yes"), ("JPCNN001.png", "no"), ("JPCNN002.png", "no")])
    with caplog.at_level(logging.INFO, logger="covidxray.data.sources"):
        frame = load_dataset(root)
    assert list(frame.columns) == COLUMNS
    assert [Path(p).name for p in frame["path"]] == ["JPCNN001.png", "JPCNN002.png"]
    assert set(frame["label"]) == {"normal"}
    assert list(frame["patient_id"]) == ["jsrt-JPCNN001", "jsrt-JPCNN002"]  # one film per patient
    assert set(frame["source"]) == {"jsrt"}
    assert "left out 1 films with a lung nodule" in caplog.text


def test_jsrt_nodule_column_must_say_yes_or_no(tmp_path):
    root = _jsrt(tmp_path / "jsrt", [("JPCNN001.png", "maybe")])
    with pytest.raises(DatasetError, match=r"metadata.csv: nodule must be yes or no, not 'maybe'"):
        load_dataset(root)


# --- select_task -----------------------------------------------------------------------------


def _frame(labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"/x/{i}.png" for i in range(len(labels))],
        "label": labels,
        "patient_id": "",
        "source": "s",
        "original_label": labels,
    })


def test_select_task_drops_other_classes():
    frame = _frame(["covid", "pneumonia", "normal", "pneumonia", "covid"])
    selected = select_task(frame, TASKS["binary"])
    assert list(selected["label"]) == ["covid", "normal", "covid"]
    assert list(selected.index) == [0, 1, 2]
    assert list(selected["path"]) == ["/x/0.png", "/x/2.png", "/x/4.png"]


def test_select_task_keeps_everything_for_three_classes():
    frame = _frame(["covid", "pneumonia", "normal"])
    assert len(select_task(frame, TASKS["three-class"])) == 3


def test_select_task_missing_class_raises_naming_it():
    frame = _frame(["covid", "normal", "normal"])
    with pytest.raises(DatasetError) as raised:
        select_task(frame, TASKS["three-class"], where="test set")
    message = str(raised.value)
    assert "test set" in message
    assert "no images of class pneumonia" in message


def test_select_task_without_require_all():
    frame = _frame(["covid", "covid", "pneumonia"])
    selected = select_task(frame, TASKS["binary"], require_all=False)
    assert list(selected["label"]) == ["covid", "covid"]


def test_select_task_with_no_class_of_the_task_raises_even_without_require_all():
    with pytest.raises(DatasetError, match="no images of covid, normal"):
        select_task(_frame(["pneumonia"]), TASKS["binary"], require_all=False)


# --- real data -------------------------------------------------------------------------------


def test_real_darkcovidnet(shared_data):
    frame = load_dataset(shared_data / "darkcovidnet")
    assert _counts(frame) == {"covid": 124, "normal": 500, "pneumonia": 500}
    assert frame["patient_id"].nunique() == 764
    assert (frame["patient_id"] != "").all()
    assert set(frame["source"]) == {"ieee8023", "nih-chestxray8"}
    assert all(Path(p).is_absolute() for p in frame["path"][:20])


def test_real_ieee8023(shared_data):
    frame = load_dataset(shared_data / "ieee8023")
    assert set(frame["label"]) == {"covid", "normal", "pneumonia"}
    assert frame["patient_id"].str.startswith("ieee8023-").all()
    assert frame["patient_id"].str.len().gt(len("ieee8023-")).all()
    assert _counts(frame)["covid"] == 415 + 12  # COVID-19 and COVID-19, ARDS
    assert _counts(frame)["normal"] == 19


def test_real_jsrt(shared_data):
    frame = load_dataset(shared_data / "jsrt")
    assert _counts(frame) == {"normal": 93}
    assert frame["patient_id"].nunique() == 93
    assert set(frame["source"]) == {"jsrt"}


# --- several datasets in one run ----------------------------------------------------------------

from covidxray.data.sources import load_datasets  # noqa: E402


def test_combined_datasets_count_a_shared_original_once(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        (root / "covid").mkdir(parents=True)
    write_image(first / "covid" / "a.png", gray(0))
    write_image(first / "covid" / "b.png", gray(1))
    (first / "manifest.csv").write_text("path,label,patient_id,source,original_name\n"
                                        "covid/a.png,covid,x-1,ieee8023,Case-One.JPEG\ncovid/b.png,covid,x-2,ieee8023,two.png\n")
    write_image(second / "covid" / "c.png", gray(2))
    write_image(second / "covid" / "d.png", gray(3))
    (second / "manifest.csv").write_text("path,label,patient_id,source,original_name\n"
                                         "covid/c.png,covid,x-1,ieee8023,case-one.png\ncovid/d.png,covid,x-3,ieee8023,three.png\n")
    table = load_datasets([first, second])
    assert sorted(Path(p).name for p in table["path"]) == ["a.png", "b.png", "d.png"]
    assert set(table["dataset"]) == {str(first), str(second)}
    with pytest.raises(DatasetError, match="named twice"):
        load_datasets([first, first])


def test_real_datasets_combined_share_120_originals(shared_data):
    dark = load_dataset(shared_data / "darkcovidnet")
    ieee = load_dataset(shared_data / "ieee8023")
    combined = load_datasets([shared_data / "darkcovidnet", shared_data / "ieee8023"])
    assert len(combined) == len(dark) + len(ieee) - 120
    covid_patients = combined.loc[combined["label"] == "covid", "patient_id"].nunique()
    assert covid_patients > dark.loc[dark["label"] == "covid", "patient_id"].nunique()


# --- hostile files (issue 12, 5 and 7) -------------------------------------------------------


def test_a_nul_byte_in_a_manifest_path_names_the_row(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    csv_path.write_bytes(b"path,label\nimg/a.png,covid\nimg/b\x00.png,normal\n")
    with pytest.raises(DatasetError, match=r"list.csv, row 3: the path 'img/b\\x00.png' holds a NUL byte.*correct"):
        load_dataset(csv_path)


def test_a_manifest_that_is_not_utf8_names_the_file_and_the_fix(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    csv_path.write_bytes("path,label\nimg/a.png,covid\nimg/b.png,normal\nimg/caf\u00e9.png,normal\n".encode("cp1252"))
    with pytest.raises(DatasetError, match=r"list.csv: cannot read as CSV \(.*utf-8.*\); save it as UTF-8 CSV"):
        load_dataset(csv_path)


def test_a_repeated_manifest_row_is_counted_once_with_a_warning(tmp_path, caplog):
    csv_path = _manifest_dataset(tmp_path / "ds")
    csv_path.write_text("path,label\nimg/a.png,covid\nimg/b.png,normal\n./img/a.png,covid\nimg/b.png,normal\n")
    with caplog.at_level(logging.WARNING, logger="covidxray"):
        frame = load_dataset(csv_path)
    assert len(frame) == 2 and list(frame["label"]) == ["covid", "normal"]
    assert "list.csv: 2 row(s) list an image already listed (first: row 4 repeats row 2," in caplog.text
    assert "each image is counted once" in caplog.text
    csv_path.write_text("path,label\nimg/a.png,covid\nimg/b.png,normal\nimg/a.png,normal\n")
    with pytest.raises(DatasetError, match=r"list.csv, rows 2, 4: .*a.png is listed as covid and normal; keep one row"):
        load_dataset(csv_path)


def test_a_manifest_pointing_outside_its_folder_is_read_with_a_warning(tmp_path, caplog):
    write_image(tmp_path / "secret" / "passwd.png", gray(9))
    csv_path = _manifest_dataset(tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="covidxray"):
        load_dataset(csv_path)
    assert caplog.text == ""  # its own images: nothing to say
    csv_path.write_text(f"path,label\nimg/a.png,covid\n../secret/passwd.png,normal\n{tmp_path / 'secret' / 'passwd.png'},"
                        "normal\n")
    with caplog.at_level(logging.WARNING, logger="covidxray"):
        frame = load_dataset(csv_path)
    assert len(frame) == 2  # the absolute path is the same file: counted once
    assert (f"list.csv: ../secret/passwd.png point outside its folder {tmp_path / 'ds'}; check that "
            "the list is the one you meant") in caplog.text  # the relative path; an absolute one is said in full
    caplog.clear()
    csv_path.write_text(f"path,label\n{tmp_path / 'secret' / 'passwd.png'},normal\n")
    with caplog.at_level(logging.WARNING, logger="covidxray"):
        load_dataset(csv_path)
    assert caplog.text == ""  # as write_subset writes them: meant


def test_ieee8023_metadata_pointing_outside_its_images_is_warned(tmp_path, caplog):
    root = _ieee8023(tmp_path / "ieee")
    write_image(tmp_path / "elsewhere.png", gray(7))
    metadata = root / "metadata.csv"
    metadata.write_text(metadata.read_text() + "9,0,COVID-19,PA,X-ray,../../elsewhere.png\n")
    with caplog.at_level(logging.WARNING, logger="covidxray"):
        load_dataset(root)
    assert "metadata.csv: ../../elsewhere.png point outside its folder" in caplog.text


def test_file_names_that_are_not_utf8_are_refused_naming_the_file(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root, {"covid": 2, "normal": 2})
    for name in (b"Bild \xe4.png", b"\xe9t\xe9.png"):  # cp1252 names, as an archive made on Windows holds
        with open(os.fsencode(root / "normal") + b"/" + name, "wb") as file:
            file.write((root / "normal" / "img0.png").read_bytes())
    with pytest.raises(DatasetError) as raised:
        load_dataset(root)
    message = str(raised.value)
    assert message.startswith(f"{root / 'normal'}/Bild \\xe4.png and 1 more: the file name is not valid UTF-8")
    assert f"rename to UTF-8, e.g. convmv -r -f cp1252 -t utf-8 --notest {root}" in message
    assert message.isprintable()


def test_escape_sequences_in_file_names_are_shown_escaped(tmp_path):
    csv_path = _manifest_dataset(tmp_path / "ds")
    csv_path.write_text("path,label\nimg/a.png,covid\n\x1b]0;owned\x07\x1b[2J.png,normal\n")
    with pytest.raises(DatasetError) as raised:
        load_dataset(csv_path)
    assert "\x1b" not in str(raised.value) and "\\x1b]0;owned\\x07\\x1b[2J.png" in str(raised.value)


def test_confounding_names_classes_with_a_source_of_their_own():
    labels = ["covid"] * 3 + ["normal"] * 3 + ["pneumonia"] * 3
    sources = ["ieee8023"] * 3 + ["nih"] * 6
    assert confounded_classes(labels, sources) == {"covid": ["ieee8023"]}
    message = confounding_warning(labels, sources)
    assert "every covid image comes from ieee8023" in message and "normal" not in message
    # binary DarkCovidNet: both classes have a source of their own
    assert set(confounded_classes(labels[:6], sources[:6])) == {"covid", "normal"}


def test_no_confounding_with_one_source_or_mixed_sources():
    assert confounding_warning(["covid", "normal"], ["a", "a"]) is None
    assert confounding_warning(["covid", "normal", "covid", "normal"], ["a", "a", "b", "b"]) is None
