from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: often several times faster than two on a small shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny RecBole dataset prepared through the CLI, once per module (leave-one-out: 4 items, 2 users)."""
    from typer.testing import CliRunner

    from agentrec.cli.main import app

    out = tmp_path_factory.mktemp("data") / "tiny"
    result = CliRunner().invoke(app, ["data", "prepare", "recbole", "--source", str(FIXTURES / "recbole" / "tiny"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
