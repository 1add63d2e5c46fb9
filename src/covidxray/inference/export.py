"""Export a trained run for inference (ONNX, TensorFlow SavedModel) and predict with ONNX Runtime.

The exported graph is the inference model: the augmentation layer is cut off, so no random op
reaches it. The class names and the input size travel with it (ONNX metadata, or a
``covidxray.json`` inside the SavedModel folder), so predicting needs nothing else, except for a
run trained with ``--lungs crop``: the metadata's ``preprocessing`` says so, and
``load_predictor(run, engine="onnxruntime")`` crops (with the Keras lung segmenter) the inputs as
training did.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from covidxray import rundir
from covidxray.errors import CovidXrayError
from covidxray.files import atomic_save, atomic_write_dir
from covidxray.inference.engines import METADATA_KEY, ONNX_EXTRA
from covidxray.inference.predictor import load_predictor
from covidxray.inference.preprocess import Preprocessing

FORMATS = ("onnx", "savedmodel")


def default_path(run: rundir.RunDir, fmt: str) -> Path:
    return run.file(rundir.ONNX_MODEL if fmt == "onnx" else rundir.SAVED_MODEL)


def export_run(run_path: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Export the model of ``run_path`` (a run folder or ``preset:NAME``) as ``fmt``; returns where it
    was written (default: inside the run folder)."""
    if fmt not in FORMATS:
        raise CovidXrayError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    predictor = load_predictor(run_path)
    target = Path(out) if out else default_path(rundir.RunDir(predictor.path), fmt)
    prep = predictor.preprocessing
    export_model(predictor.model, fmt, target, predictor.classes, predictor.image_size,
                 preprocessing={**prep.settings(), "decode_side": prep.decode_side})
    return target


def export_model(model, fmt: str, target: str | Path, classes, image_size: int, preprocessing: dict | None = None) -> None:
    """Write ``model``'s inference part (augmentation cut off) to ``target``, atomically.

    ``preprocessing``: what the inputs went through before the model (the run's ``lungs``),
    recorded beside the classes: a run trained with ``--lungs crop`` needs its
    inputs cropped the same way, which ``load_predictor(run, engine="onnxruntime")`` does."""
    import keras

    from covidxray.models.batchnorm import without_augmentation

    if fmt not in FORMATS:
        raise CovidXrayError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    inference = without_augmentation(model)
    metadata = {"classes": list(classes), "image_size": image_size, "model": model.name,
                "preprocessing": preprocessing or {**Preprocessing(image_size).settings(), "decode_side": image_size},
                "input": "grayscale (n, size, size, 1) float32 in [0, 255]"}
    signature = [keras.InputSpec(shape=(None, image_size, image_size, 1), dtype="float32", name="image")]
    backend = keras.backend.backend()
    if fmt == "savedmodel":
        if backend != "tensorflow":
            raise CovidXrayError(f"SavedModel export needs the TensorFlow backend (this is {backend}); "
                                 "rerun with KERAS_BACKEND=tensorflow, or use --format onnx")

        def write_saved_model(folder: Path) -> None:
            inference.export(str(folder), format="tf_saved_model", verbose=False, input_signature=signature)
            (folder / f"{METADATA_KEY}.json").write_text(json.dumps(metadata, indent=2) + "\n")

        atomic_write_dir(target, write_saved_model)
        return

    def write_onnx(path: Path) -> None:
        try:
            with warnings.catch_warnings():  # Keras's tf2onnx patch probes np.object, which warns
                warnings.filterwarnings("ignore", category=FutureWarning, module="keras.src.export.tf2onnx_lib")
                inference.export(str(path), format="onnx", verbose=False, input_signature=signature)
            import onnx
        except ImportError as error:  # the converter each backend needs: tf2onnx, onnxscript, jax2onnx
            fix = "pip install jax2onnx" if backend == "jax" else ONNX_EXTRA
            raise CovidXrayError(f"ONNX export on the {backend} backend needs a package that is missing ({error}); "
                                 f"{fix}") from None
        graph = onnx.load(str(path))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(graph, str(path))

    atomic_save(target, write_onnx)
