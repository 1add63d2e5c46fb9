"""What a run's TensorBoard logs cost: seconds spent writing them and bytes on disk.

    covidxray data subset --data ../shared/data/darkcovidnet --per-class 20 --out /tmp/dcn-60.csv
    python benchmarks/tensorboard_cost.py --data /tmp/dcn-60.csv --epochs 2 --out /tmp/tb-run

Trains one run with the default model (``covidxray.train``) and times, inside it, every method of
the TensorBoard callback (:class:`covidxray.training.callbacks.EpochTensorBoard`) and the report's
summaries (:func:`covidxray.training.tracking.write_report_summaries`); timing the callback's own
calls, rather than a run with and without it, keeps a busy machine's noise out of the figure.
Prints one JSON line: those seconds, the run's fit and total seconds, and the bytes of each part
of ``RUN/tensorboard/`` (``train``, ``validation``: epoch scalars; ``test``: the test scores and the
confusion matrix and ``pred.png`` as images).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import covidxray.training.train as train_module
from covidxray import rundir
from covidxray.config import TrainConfig
from covidxray.training.callbacks import EpochTensorBoard

CALLBACK_METHODS = ("set_model", "on_train_begin", "on_train_batch_end", "on_epoch_end", "on_train_end")


@contextlib.contextmanager
def _timed(owner, name: str, spent: dict):
    """Add the seconds each call of ``owner.name`` takes to ``spent[name]`` while inside."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    setattr(owner, name, wrapped)
    try:
        yield
    finally:
        setattr(owner, name, original)


def measure(data: str, out: str, epochs: int, image_size: int | None = None) -> dict:
    spent: dict[str, float] = {}
    config = TrainConfig(data=data, epochs=epochs, image_size=image_size)
    with contextlib.ExitStack() as timing:
        for name in CALLBACK_METHODS:
            timing.enter_context(_timed(EpochTensorBoard, name, spent))
        timing.enter_context(_timed(train_module, "write_report_summaries", spent))
        metrics = train_module.train(config, out, overwrite=True, verbose=0)
    logs = rundir.RunDir(out).file(rundir.TENSORBOARD)
    return {"seconds": {name: round(value, 3) for name, value in spent.items()},
            "tensorboard_seconds": round(sum(spent.values()), 3),
            "fit_seconds": metrics["run"]["fit_seconds"], "total_seconds": metrics["run"]["total_seconds"],
            "epochs": metrics["run"]["epochs_run"], "images": metrics["run"]["images"],
            "bytes": {part.name: sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
                      for part in sorted(logs.iterdir())},
            "pred_png_bytes": rundir.RunDir(out).file(rundir.PREDICTIONS_FIGURE).stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a dataset, as for covidxray train (a small one)")
    parser.add_argument("--out", required=True, help="run folder to write (replaced)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    args = parser.parse_args(argv)
    result = measure(args.data, args.out, args.epochs, args.image_size)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
