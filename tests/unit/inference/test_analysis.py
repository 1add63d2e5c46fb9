"""covidxray.inference.analysis: one X-ray at a time, with its heatmap, from a run loaded once."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from covidxray.data.images import resize_square
from covidxray.errors import ImageReadError
from covidxray.inference.analysis import DISPLAY_SIZE, PICTURE_SIDE, XrayAnalyzer
from covidxray.inference.predictor import load_predictor
from helpers import build_run, gray, png_bytes, write_dicom


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("analysis") / "run")


def test_analyzer_reads_files_and_keeps_the_aspect_ratio(run_dir, tmp_path):
    analyzer = XrayAnalyzer(run_dir)
    path = write_dicom(tmp_path / "wide.dcm", np.arange(48 * 96, dtype=np.uint16).reshape(48, 96))
    result = analyzer.analyse_file(path)
    assert result.label in analyzer.classes and abs(sum(result.probabilities.values()) - 1) < 1e-4
    shown = Image.open(io.BytesIO(result.image_png))
    heatmap = Image.open(io.BytesIO(result.heatmap_png))
    assert shown.size == (384, 192) and shown.mode == "L"
    assert heatmap.mode == "RGB" and heatmap.size[0] >= 400  # a figure: the X-ray (96 x 48, as it is), title, colour bar


def test_analyse_gives_the_predictors_answer(run_dir):
    predictor = load_predictor(run_dir)
    analyzer = XrayAnalyzer(predictor)  # a loaded predictor is used as it is
    assert analyzer.predictor is predictor and analyzer.run_dir == run_dir and analyzer.classes == predictor.classes
    image = gray(5, (100, 60))
    result = analyzer.analyse("x.png", png_bytes(image))
    probabilities, decided = predictor.predict(resize_square(image, 32)[None, ..., None])
    assert result.label == predictor.classes[int(decided[0])]
    assert list(result.probabilities.values()) == pytest.approx(probabilities[0].tolist(), abs=1e-6)
    assert Image.open(io.BytesIO(result.image_png)).size == (round(60 * DISPLAY_SIZE / 100), DISPLAY_SIZE)
    with pytest.raises(ImageReadError, match="not an image file"):
        analyzer.analyse("notes.txt", b"not pixels")


def test_threads_share_one_analyzer(run_dir):
    analyzer = XrayAnalyzer(run_dir)
    data = png_bytes(gray(7, (40, 40)))
    expected = analyzer.analyse("x.png", data).probabilities
    results = []
    threads = [threading.Thread(target=lambda: results.append(analyzer.analyse("x.png", data).probabilities))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


def test_a_batch_of_uploads_gives_each_the_answer_it_gets_alone(run_dir):
    analyzer = XrayAnalyzer(run_dir)
    payloads = [png_bytes(gray(seed, shape)) for seed, shape in ((11, (40, 40)), (12, (100, 60)), (13, (2400, 1300)))]
    alone = [analyzer.analyse("x.png", data) for data in payloads]
    uploads = [analyzer.upload("x.png", data) for data in payloads]
    assert max(uploads[2].picture.shape) == PICTURE_SIDE  # a large upload is kept at most this large
    together = analyzer.analyse_uploads(uploads)
    for one, batched in zip(alone, together):
        assert batched.label == one.label and batched.lungs == one.lungs
        assert list(batched.probabilities.values()) == pytest.approx(list(one.probabilities.values()), abs=1e-5)
        assert Image.open(io.BytesIO(batched.heatmap_png)).size == Image.open(io.BytesIO(one.heatmap_png)).size
