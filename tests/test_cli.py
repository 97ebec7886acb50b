"""CLI smoke tests: data -> pretrain -> train -> encode, and the partition printer."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from diti.cli.main import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_partition_json_prints_the_official_partition():
    out = invoke("partition", "--latent-dim", 512, "--k", 64, "--timesteps", 1000,
                 "--stages", "50,100,300,500,1000", "--dims-per-stage", "10,25,327,100,50", "--json")
    data = json.loads(out)  # nothing but one JSON object
    assert set(data) == {"chunk_end_dims", "chunk_of_t"}
    assert data["chunk_end_dims"][:8] == [2, 4, 6, 10, 18, 26, 35, 60] and data["chunk_end_dims"][-1] == 512
    assert len(data["chunk_of_t"]) == 1000 and data["chunk_of_t"][47] == 3


def test_partition_table_and_errors():
    out = invoke("partition", "--latent-dim", 16, "--k", 4)
    assert "250-499" in out and "balanced" in out
    result = runner.invoke(app, ["partition", "--latent-dim", "16", "--k", "4", "--stages", "50,900",
                                 "--dims-per-stage", "8,8"])
    assert result.exit_code == 2 and "last stage must end at T=1000" in result.output
    out = invoke("partition", "--preset", "shapes-demo")
    assert "d=64, k=8" in out
    # a rule in the config is resolved before printing; auto names what train does instead of a table
    out = invoke("partition", "--preset", "shapes2-bench", "--set", "partition.rule=official", "--set", "partition.k=20")
    assert out.splitlines()[2].split() == ["0", "0", "0-49", "0-1", "2"]  # the official dims 2/2/18/6/4, not 32 / 20
    out = invoke("partition", "--preset", "shapes2-bench", "--set", "partition.rule=removed_loss",
                 "--set", "partition.rule_source=auto")
    assert "rule_source=auto" in out and "500-step PDAE run" in out


def test_pipeline_smoke(tmp_path):
    data, dm, run = tmp_path / "data", tmp_path / "dm", tmp_path / "run"
    invoke("data", "shapes", "--out", data, "--resolution", 16, "--n-train", 48, "--n-test", 16)
    invoke("pretrain", "--preset", "shapes-quick", "--data", data, "--out", dm, "--steps", 3, "--set", "train.progress=false")
    assert (dm / "dm" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    invoke("train", "--preset", "shapes-quick", "--dm", dm, "--data", data, "--out", run, "--steps", 3,
           "-s", "train.progress=false", "-s", "train.batch_size=8")
    out = invoke("encode", run, "--data", data, "--split", "test", "--out", tmp_path / "z.npy")
    assert "encoded 16 images to 16 dims" in out
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (16, 16) and np.isfinite(z).all()
    assert (tmp_path / "z.attributes.csv").read_text().startswith("index,background_color")
    invoke("encode", run, "--data", data, "--split", "train", "--out", tmp_path / "z.safetensors")
    # resume continues the same run to more steps
    invoke("train", "--out", run, "--resume", "--steps", 4, "-s", "train.progress=false")
    assert '"step": 4' in (run / "checkpoints" / "step-00000004" / "state.json").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--preset", "shapes-quick", "--out", "{tmp}/r", "--data", "{tmp}"], "dm (the frozen diffusion model folder) is not set"),
        (["train", "--preset", "shapes-quick", "--out", "{tmp}/r", "--dm", "{tmp}/nope", "--data", "{tmp}"], "DM folder not found"),
        (["train", "--preset", "nope", "--out", "{tmp}/r"], "unknown preset 'nope'"),
        (["train", "--out", "{tmp}/r", "-s", "train.lr=abc"], "train.lr: expected a number"),
        (["encode", "{tmp}", "--data", "{tmp}", "--out", "{tmp}/z.npy"], "not a diti run folder"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
