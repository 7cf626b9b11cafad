"""Following a run: progress on stderr, TensorBoard beside metrics.csv, curves, previews."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from geofm.cli import main
from geofm.errors import GeofmError
from geofm.plot import plot_run, run_curves
from geofm.training.progress import StepProgress, format_seconds, metrics_text
from geofm.viz import GREY, preview_panels, reconstruction_preview, stretch


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(steps: int, callback: StepProgress) -> None:
    data = DataLoader(TensorDataset(torch.randn(2, 4)), batch_size=2)  # one batch per epoch
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback], accelerator="cpu")
    trainer.fit(_Tiny(), data)


def test_progress_counts_global_steps_in_few_lines_without_a_terminal() -> None:
    stream = io.StringIO()
    _fit(40, StepProgress("pretrain", stream=stream, interactive=False))
    lines = stream.getvalue().splitlines()
    # 40 one-batch epochs: one line per tenth of the run, not one per epoch.
    assert 1 < len(lines) <= 11
    assert all(line.startswith("pretrain: step ") for line in lines)
    assert lines[-1].startswith("pretrain: step 40/40 (100%), loss ")
    assert "ETA 0:00" in lines[-1] and "steps/s" in lines[-1]
    assert not any("Epoch" in line for line in lines)


def test_progress_bar_on_a_terminal_shows_step_of_max_steps() -> None:
    stream = io.StringIO()
    _fit(5, StepProgress("finetune", stream=stream, interactive=True))
    assert "step 5/5" in stream.getvalue().split("\r")[-1]


def test_progress_helpers() -> None:
    assert format_seconds(75) == "1:15"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(float("nan")) == "?"
    assert metrics_text({"train/loss": torch.tensor(0.51234), "val/miou": 0.25}) == \
        "loss 0.5123, val/miou 0.25"


def test_pretrain_progress_on_stderr_tensorboard_and_plot(
        reben_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    code = main(["pretrain", "--data", str(reben_store), "--max-steps", "3", "--output",
                 str(run), "--model", "vit_test", "--objective", "mae", "--logger",
                 "tensorboard", "--set", "model.kwargs={}", "--set",
                 "objective.kwargs={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
                 "--set", "data.split=null", "--set", "trainer.accelerator=cpu", "--set",
                 "trainer.log_every_n_steps=1"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[0].startswith("pretrained 3 steps")  # stdout: the report only
    assert "step" not in out.replace("pretrained 3 steps", "")
    assert "pretrain: step 3/3 (100%)" in err
    assert "Epoch" not in out + err
    assert "eval mode" not in out + err
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (run / "metrics.csv").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]

    assert main(["plot", str(run), "-o", str(tmp_path / "curves.png")]) == 0
    out, _ = capsys.readouterr()
    assert "(loss, learning rate)" in out
    with Image.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG" and im.height > im.width / 2


def test_plot_panels_from_metrics_and_probe(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,train/lr,val/miou,val/loss\n"
        "0,0,2.0,0.001,,\n0,1,1.5,0.002,,\n0,1,,,0.2,1.7\n0,2,1.0,0.003,,\n")
    (tmp_path / "probe.csv").write_text("step,map_macro,top1\n0,0.1,0.2\n2,0.3,0.4\n")
    panels = run_curves(tmp_path)
    assert [p.title for p in panels] == ["loss", "learning rate", "kNN probe", "validation"]
    steps, values = panels[0].series["train/loss"]
    assert steps.tolist() == [0, 1, 2] and values.tolist() == [2.0, 1.5, 1.0]
    assert set(panels[0].series) == {"train/loss", "val/loss"}
    assert set(panels[2].series) == {"map_macro", "top1"}
    png, titles = plot_run(tmp_path)
    assert png == tmp_path / "curves.png" and png.stat().st_size > 0
    assert titles == ["loss", "learning rate", "kNN probe", "validation"]


def test_plot_bad_runs(tmp_path: Path) -> None:
    with pytest.raises(GeofmError, match="no such run directory"):
        plot_run(tmp_path / "missing")
    with pytest.raises(GeofmError, match=r"no metrics\.csv"):
        plot_run(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n")
    with pytest.raises(GeofmError, match="no logged values"):
        plot_run(tmp_path)


def _token_masks() -> tuple[np.ndarray, ...]:
    """One 3-band 8 × 8 image, 4-px tokens: TL visible, TR and BL reconstructed, BR neither."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1000, (1, 3, 8, 8)).astype(np.float32)
    visible = np.zeros((1, 3, 8, 8), bool)
    target = np.zeros((1, 3, 8, 8), bool)
    visible[..., :4, :4] = True
    target[..., :4, 4:] = True
    target[..., 4:, :4] = True
    pred = np.where(target, 500.0 - images / 2, 0).astype(np.float32)  # not the input
    return images, visible, pred, target


def test_preview_shows_the_reconstruction_only_on_reconstructed_tokens() -> None:
    images, visible, pred, target = _token_masks()
    bands = ["S2.B04", "S2.B03", "S2.B02"]
    row = preview_panels(images, visible, pred, target, bands)[0]
    x = images[0]
    lo = np.percentile(x.reshape(3, -1), 2, axis=1)
    hi = np.percentile(x.reshape(3, -1), 98, axis=1)
    recon = row["reconstruction"]  # [H, W, 3]
    # Reconstructed tokens: the model's output, stretched like the input.
    np.testing.assert_allclose(recon[:4, 4:], stretch(pred[0], lo, hi)[:4, 4:])
    np.testing.assert_allclose(recon[4:, :4], stretch(pred[0], lo, hi)[4:, :4])
    # Everything else: grey, never the input's pixels.
    assert (recon[:4, :4] == GREY).all() and (recon[4:, 4:] == GREY).all()
    assert not np.allclose(recon[:4, :4], row["input"][:4, :4])
    np.testing.assert_allclose(row["target"][:4, 4:], row["input"][:4, 4:])
    np.testing.assert_allclose(row["encoder input"][:4, :4], row["input"][:4, :4])
    assert (row["encoder input"][:4, 4:] == GREY).all()
    assert row["neither"][4:, 4:].all() and not row["neither"][:4].any()
    assert row["reconstructed"].sum() == 32 and row["seen"].sum() == 16


def test_preview_png_is_written(tmp_path: Path) -> None:
    images, visible, pred, target = _token_masks()
    out = reconstruction_preview(images, visible, pred, target, ["S2.B04", "S2.B03", "S2.B02"],
                                 tmp_path / "p.png", title="test")
    with Image.open(out) as im:
        assert im.width > 3 * im.height / 2  # four panels side by side
