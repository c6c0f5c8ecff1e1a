"""`training.report_to: [wandb]`, `[mlflow]` and all three: three steps of the tiny model, then the
trackers' local stores read back (W&B's offline run file, MLflow's file store through its client)
hold the same losses as trainer_state.json's log_history, and the resolved recipe. No network."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import make_recipe

from llmft.cli import main
from llmft.config import validate_recipe
from llmft.run import train

pytestmark = pytest.mark.usefixtures("restore_process_state")


@pytest.fixture(autouse=True)
def local_trackers(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config/wandb
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def run(tiny_model_dir, sft_file, out: Path, report_to: list[str]):
    recipe = make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 3, "report_to": report_to})
    result = train(validate_recipe(recipe))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["loss"] for h in history if "loss" in h] == [h["loss"] for h in result.log_history if "loss" in h]
    return [(h["step"], h["loss"]) for h in history if "loss" in h], yaml.safe_load((out / "recipe.resolved.yaml").read_text())


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (`run-*.wandb`): a 7-byte header, then LevelDB-style
    32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1: full, 2: first, 3: middle, 4: last)`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_losses_and_config(out: Path) -> tuple[list[tuple[int, float]], dict]:
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    losses, config = [], {}
    for record in wandb_records(next(runs[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "train/loss" in row:
                losses.append((row["train/global_step"], row["train/loss"]))
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    saved = runs[0] / "files" / "recipe.resolved.yaml"
    assert saved.is_file(), "the resolved recipe is not among the run's files"
    return losses, config | {"saved": yaml.safe_load(saved.read_text())}


def mlflow_losses_and_params(out: Path) -> tuple[list[tuple[int, float]], dict, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    losses = [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    recipe = yaml.safe_load(Path(client.download_artifacts(run_id, "recipe.resolved.yaml", str(out / "dl"))).read_text())
    return losses, runs[0].data.params, artifacts + [recipe]


def test_wandb_offline_run_holds_the_losses_and_the_recipe(tiny_model_dir, sft_file, tmp_path):
    losses, recipe = run(tiny_model_dir, sft_file, tmp_path / "run", ["wandb"])
    logged, config = wandb_losses_and_config(tmp_path / "run")
    assert logged == losses and len(losses) == 3
    assert config["recipe"] == recipe and config["saved"] == recipe


def test_mlflow_file_store_holds_the_losses_and_the_recipe(tiny_model_dir, sft_file, tmp_path):
    losses, recipe = run(tiny_model_dir, sft_file, tmp_path / "run", ["mlflow"])
    logged, params, artifacts = mlflow_losses_and_params(tmp_path / "run")
    assert logged == [(step, pytest.approx(loss)) for step, loss in losses] and len(losses) == 3
    assert params["recipe.training.learning_rate"] == str(recipe["training"]["learning_rate"])
    assert params["recipe.model.path"] == recipe["model"]["path"]
    assert "recipe.resolved.yaml" in artifacts and artifacts[-1] == recipe


def test_all_three_trackers_at_once(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    losses, recipe = run(tiny_model_dir, sft_file, out, ["tensorboard", "wandb", "mlflow"])
    assert wandb_losses_and_config(out)[0] == losses
    assert [loss for _, loss in mlflow_losses_and_params(out)[0]] == pytest.approx([loss for _, loss in losses])
    assert list((out / "logs").glob("events.out.tfevents.*"))


def test_a_missing_tracker_package_is_refused_before_loading(tiny_model_dir, sft_file, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe_file = tmp_path / "r.yaml"
    out = tmp_path / "run"
    recipe_file.write_text(yaml.safe_dump(make_recipe(tiny_model_dir, sft_file, out, training={"report_to": ["wandb"]})))
    for command in ("validate", "train"):
        assert main([command, str(recipe_file)]) == 2
        err = capsys.readouterr().err
        assert "training.report_to: wandb is not installed: pip install 'llmft[trackers]'" in err
    assert not out.exists()
