"""``--device``: the resolver, training and evaluating on the CPU through the CLI and the API, clear errors for a
device this machine lacks, and checkpoints that load anywhere. The CUDA tests are marked ``gpu`` and skipped
without one (CI never needs a GPU)."""

from __future__ import annotations

import json

import pytest
import torch
from test_models_contract import cycle_dataset
from typer.testing import CliRunner

from agentrec.cli.main import app
from agentrec.core.devices import resolve_device
from agentrec.core.errors import UsageError
from agentrec.core.options import OptionError
from agentrec.data.dataset import PreparedDataset
from agentrec.models import model_class
from agentrec.training.runs import evaluate_run, load_model
from agentrec.training.trainer import TrainConfig, train_model

runner = CliRunner()
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")


def niser(ds, size=16):
    torch.manual_seed(0)
    return model_class("niser")(ds.n_items, model_class("niser").Config(embedding_size=size))


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    for bad in ("gpu0", "cuda:", "cuda:x", "", "mps"):
        with pytest.raises(UsageError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


@no_cuda
def test_cuda_without_a_gpu_is_a_usage_error():
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UsageError, match="no CUDA device is available"):
            resolve_device(name)


def test_train_config_checks_the_device_name():
    assert TrainConfig().device == "auto"
    assert TrainConfig(device="CUDA:1").device == "cuda:1"  # the name only: no GPU is looked for here
    with pytest.raises(OptionError) as caught:
        TrainConfig(device="gpu0")
    assert caught.value.option == "device"


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cli_trains_and_evaluates_on_the_device(tmp_path, tiny_data, device):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run),
                                 "--epochs", "1", "--device", device, "--precision", "fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "run.json").read_text())
    assert saved["train_config"]["device"] == device and saved["train_config"]["precision"] == "fp32"
    assert saved["extra"]["device"] == str(resolve_device(device)) and saved["extra"]["precision"] == "fp32"
    result = runner.invoke(app, ["evaluate", str(run), "--device", device])
    assert result.exit_code == 0, result.output
    assert "recall@20" in json.loads((run / "run.json").read_text())["test"]


def test_cli_device_and_precision_defaults_are_recorded(tmp_path, tiny_data):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run),
                                 "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "run.json").read_text())
    assert saved["train_config"]["device"] == "auto" and saved["train_config"]["precision"] == "fp32"


@no_cuda
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_cuda_without_a_gpu_exits_1_with_one_line(tmp_path, tiny_data, command):
    run = tmp_path / "run"
    if command == "evaluate":
        assert runner.invoke(app, ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run),
                                   "--epochs", "1", "--device", "cpu", "--quiet"]).exit_code == 0
        args = ["evaluate", str(run), "--device", "cuda"]
    else:
        args = ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(run), "--device", "cuda"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device is available" in lines[0], result.output
    assert "Traceback" not in result.output
    if command == "train":
        assert not run.exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_malformed_device_is_a_clear_error(tmp_path, tiny_data, command):
    if command == "train":
        args = ["train", "--model", "niser", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--device", "gpu0"]
    else:
        args = ["evaluate", str(tmp_path), "--device", "gpu0"]
    result = runner.invoke(app, args)
    assert result.exit_code in (1, 2), result.output
    assert "gpu0" in result.output and "cuda:N" in result.output and "Traceback" not in result.output


def test_a_checkpoint_loads_on_the_cpu_and_the_api_takes_a_device(tmp_path, tiny_data):
    import agentrec

    run = agentrec.train("niser", tiny_data, out=tmp_path / "run", epochs=1, device="cpu")
    assert run.device == "cpu" and run.info.extra["device"] == "cpu"
    _, model = load_model(run.path, PreparedDataset.load(tiny_data), device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    loaded = agentrec.load_run(run.path, device="auto")
    assert next(loaded.model.parameters()).device.type == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(UsageError, match="gpu0"):
        agentrec.load_run(run.path, device="gpu0")
    with pytest.raises(UsageError, match="gpu0"):
        agentrec.train("niser", tiny_data, out=tmp_path / "r2", epochs=1, device="gpu0")


def test_the_trainer_keeps_cpu_behaviour_with_device_cpu():
    ds = cycle_dataset(n_train=64)
    plain = train_model(niser(ds), ds, TrainConfig(epochs=2, batch_size=16, patience=5, device="cpu"),
                        progress=False)
    auto = train_model(niser(ds), ds, TrainConfig(epochs=2, batch_size=16, patience=5), progress=False)
    if not HAS_CUDA:  # auto is the CPU here: the same losses
        assert [h["loss"] for h in auto.history] == [h["loss"] for h in plain.history]
    assert plain.extra["device"] == "cpu"


# ---------------------------------------------------------------------------------------------- on a GPU
@gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_and_evaluate_on_cuda(tmp_path, precision):
    ds = cycle_dataset(n_train=64)
    model = niser(ds)
    info = train_model(model, ds, TrainConfig(epochs=2, batch_size=16, patience=5, device="cuda",
                                              precision=precision), out=tmp_path / "run", progress=False)
    assert info.extra["device"].startswith("cuda") and info.extra["precision"] == precision
    assert next(model.parameters()).device.type == "cuda"
    # the checkpoint is device-free: it loads on the CPU and on the GPU, and both rank alike
    _, on_cpu = load_model(tmp_path / "run", ds, device="cpu")
    _, on_gpu = load_model(tmp_path / "run", ds, device="cuda")
    assert next(on_cpu.parameters()).device.type == "cpu" and next(on_gpu.parameters()).device.type == "cuda"
    for evaluated in ("fp32", "bf16"):  # the product path: queries on the GPU, ranks on the CPU
        _, cpu_result = evaluate_run(tmp_path / "run", dataset=ds, split="valid", model=on_cpu, precision=evaluated)
        _, gpu_result = evaluate_run(tmp_path / "run", dataset=ds, split="valid", model=on_gpu, precision=evaluated)
        for key, value in cpu_result.metrics.items():
            assert gpu_result.metrics[key] == pytest.approx(value, abs=1e-6), key
