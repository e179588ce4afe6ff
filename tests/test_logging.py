"""A training run's numbers: TensorBoard event files by default (per-step and per-epoch
scalars), ``metrics.jsonl``, and messages through the ``hrf_jax`` logger at the chosen level."""

import logging
import struct

import pytest
from tensorboardX.proto import event_pb2

from hrf_jax.cli import main
from hrf_jax.logs import get_logger, set_verbosity
from hrf_jax.metrics_writer import TENSORBOARD_DIR


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TFRecord-framed event files under ``folder``: tag -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_training_writes_step_and_epoch_scalars(trained_run):
    run = trained_run("conformer", "light")
    scalars = _scalars(run / TENSORBOARD_DIR)
    for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/steps_per_second",
                "train/examples_per_second", "epoch/train_loss", "val/ua", "val/wa"):
        assert tag in scalars, sorted(scalars)
    epochs = [step for step, _ in scalars["val/ua"]]
    assert len(epochs) == 2 and epochs == sorted(epochs)
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == sorted(steps) and steps[-1] == epochs[-1]  # a window ends every epoch
    assert all(v > 0 for _, v in scalars["train/steps_per_second"])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_verbosity_sets_the_level_and_quiets_libraries(capsys):
    try:
        set_verbosity("warning")
        get_logger().info("hidden")
        get_logger().warning("shown")
        assert logging.getLogger("absl").level == logging.WARNING
        out, err = capsys.readouterr()
        assert "hidden" not in out + err and "warning: shown" in err
        set_verbosity("debug")
        assert logging.getLogger("absl").level == logging.DEBUG
    finally:
        set_verbosity("info")


def test_verbosity_is_a_command_line_option(capsys):
    with pytest.raises(SystemExit):
        main(["--verbosity", "loud", "demo"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err
