"""train.py's command line: option layers, error messages and exit codes (no compiling)."""
import json
from pathlib import Path

import numpy as np
import pytest

from sophia.data.make import make_dataset
from sophia.options import ModelOptions, OptionError, TrainOptions
from sophia.data.dataset import check_dataset
from sophia.training import cli
from sophia.training.cli import DEMO_CONFIG, main, merge_options, parse_sets, read_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adding_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "adding"
    make_dataset("adding", out, seed=3, counts={"train": 6, "dev": 2, "test": 1}, T=12)
    return str(out)


@pytest.fixture(scope="module")
def timed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "async"
    make_dataset("frequency", out, seed=3, counts={"train": 4, "dev": 2, "test": 1}, sampling="async")
    return str(out)


def run(capsys, *argv, options=None):
    rc = main(list(argv), options=options)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_train_py_block_holds_valid_overrides_only():
    """The block is the researcher's to edit: any valid names, and nothing else."""
    import train
    merge_options(train.OPTIONS, {})                 # an unknown name or a bad value raises


def test_the_block_overrides_the_defaults_and_configs_override_the_block():
    model, train_options = merge_options({"net_width": 128, "lr_init_val": 3e-4}, {"net_width": 32})
    assert (model.net_width, train_options.lr_init_val) == (32, 3e-4)
    assert merge_options({}, {}) == (ModelOptions(), TrainOptions())
    with pytest.raises(OptionError, match="unknown option 'net_widht'"):
        merge_options({"net_widht": 8}, {})


@pytest.mark.parametrize("config", sorted(REPO_ROOT.glob("configs/*.toml")) + [Path(str(DEMO_CONFIG))],
                         ids=lambda p: p.stem)
def test_every_shipped_config_names_valid_options(config):
    import train
    model, train_options = merge_options(train.OPTIONS, read_config(config))
    model.validate()
    train_options.validate()


def test_unknown_set_key_exits_2_listing_valid_keys(capsys, adding_dir, tmp_path):
    rc, _, err = run(capsys, "--data_dir", adding_dir, "--save_to", str(tmp_path / "ws"),
                     "--set", "net_widht=8")
    assert rc == 2
    assert "unknown option 'net_widht'" in err and "net_width" in err and "lr_init_val" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()


def test_wrong_type_is_a_clear_message(capsys, adding_dir, tmp_path):
    rc, _, err = run(capsys, "--data_dir", adding_dir, "--save_to", str(tmp_path / "ws"),
                     "--set", "batch_size=many")
    assert rc == 2
    assert "option 'batch_size' expects a int, got 'many'" in err


def test_set_without_equals_and_bad_config(capsys, adding_dir, tmp_path):
    rc, _, err = run(capsys, "--data_dir", adding_dir, "--save_to", str(tmp_path / "ws"), "--set", "lr")
    assert rc == 2 and "NAME=VALUE" in err
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nnet_width = 8\n")
    rc, _, err = run(capsys, "--data_dir", adding_dir, "--save_to", str(tmp_path / "ws"),
                     "--config", str(config))
    assert rc == 2 and "flat" in err


def test_layers_of_options_later_wins(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('net_width = 12\nlr_init_val = 0.5\nunit_type = "gru"\n')
    explicit = {**read_config(config), **parse_sets(["net_width=20", "max_epochs=3"])}
    model, train = merge_options({"net_width": 4, "net_depth": 3, "lr_init_val": 0.1}, explicit)
    assert (model.net_width, model.net_depth, model.unit_type) == (20, 3, "gru")
    assert (train.lr_init_val, train.max_epochs) == (0.5, 3)


def test_loaded_architecture_wins_and_differences_are_listed():
    loaded = ModelOptions(input_dim=2, target_dim=1, net_width=4, net_depth=1)
    model, _ = merge_options({"net_width": 64}, {"net_depth": "1", "input_dim": 0, "lr_init_val": 1e-4},
                             loaded=loaded)
    assert model == loaded
    with pytest.raises(OptionError) as error:
        merge_options({}, {"net_width": 8, "unit_type": "gru", "net_depth": 1}, loaded=loaded)
    assert "net_width: saved 4, requested 8" in str(error.value)
    assert "unit_type: saved 'lstm', requested 'gru'" in str(error.value)
    assert "net_depth" not in str(error.value)


def test_check_passes_on_good_data(capsys, adding_dir):
    rc, out, _ = run(capsys, "--check", "--data_dir", adding_dir)
    assert rc == 0 and "train: 6 sequences" in out


def test_check_names_the_bad_file(capsys, tmp_path):
    out = tmp_path / "bad"
    make_dataset("adding", out, seed=1, counts={"train": 3, "dev": 1, "test": 1}, T=12)
    bad = out / "train" / "000001.input"
    data = np.fromfile(bad, "<f4")
    data[5] = np.nan
    data.tofile(bad)
    rc, _, err = run(capsys, "--check", "--data_dir", str(out))
    assert rc == 1
    assert str(bad) in err and "not finite" in err


def test_batch_norm_with_time_files_is_a_clear_error(capsys, timed_dir, adding_dir, tmp_path):
    rc, _, err = run(capsys, "--data_dir", timed_dir, "--save_to", str(tmp_path / "ws"),
                     "--set", "batch_norm=true", "--set", "batch_size=2")
    assert rc == 2
    assert "batch_norm" in err and ".time files" in err
    rc, _, err = run(capsys, "--data_dir", adding_dir, "--save_to", str(tmp_path / "ws"),
                     "--set", "batch_norm=true", "--set", "batch_size=1")
    assert rc == 2 and "batch_size >= 2" in err


def test_load_from_missing_workspace(capsys, tmp_path):
    rc, _, err = run(capsys, "--load_from", str(tmp_path / "nothing"))
    assert rc == 1 and "nothing" in err


def test_load_from_mismatch_before_any_compile(capsys, tmp_path, adding_dir):
    from tests.model_workspaces import write_workspace  # a small saved net (no training)
    ws = write_workspace(tmp_path / "ws")
    options = json.loads((tmp_path / "ws" / "options.json").read_text())
    assert options["model"]["net_width"] == 8
    rc, _, err = run(capsys, "--load_from", ws, "--data_dir", adding_dir,
                     "--set", "net_width=16", "--set", "lr_init_val=0.1")
    assert rc == 2
    assert "net_width: saved 8, requested 16" in err and "lr_init_val" not in err


def test_demo_config_is_package_data_and_sophia_data_makes_its_dataset(tmp_path, monkeypatch):
    import sophia.training
    config = Path(str(DEMO_CONFIG)).resolve()
    assert config == Path(sophia.training.__file__).resolve().parent / "demo.toml"
    assert config.is_file() and not hasattr(cli, "REPO_ROOT")
    assert not (REPO_ROOT / "configs" / "demo.toml").exists()     # one source of the overrides
    monkeypatch.chdir(tmp_path)                                     # any directory will do
    args = cli.build_parser().parse_args(["--demo"])
    cli._demo_defaults(args)
    assert Path(args.config).resolve() == config
    assert read_config(args.config)["net_width"] == 32
    summary = check_dataset(args.data_dir)
    assert summary.sequences == {"train": 2000, "dev": 200, "test": 200}
    assert (summary.input_dim, summary.target_dim) == (2, 1)
    assert "T=20" in (tmp_path / cli.DEMO_DATA / "README.txt").read_text()


@pytest.mark.slow
def test_plain_install_runs_from_an_empty_directory(tmp_path):
    """``pip install --target`` (not editable): sophia-data make and the demo config, no checkout."""
    import shutil
    import subprocess
    import sys
    source, target, empty = tmp_path / "source", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    shutil.copytree(REPO_ROOT / "sophia", source / "sophia",      # build outside the checkout
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "setup.py", source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(source)], check=True, timeout=300)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)}

    def python(*argv):
        return subprocess.run([sys.executable, *argv], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=120)

    made = python("-m", "sophia.data", "make", "adding", "--out", "X", "--T", "20",
                  "--train", "3", "--dev", "1", "--test", "1")
    assert made.returncode == 0 and "wrote X: train 3, dev 1, test 1" in made.stdout, made.stderr
    shown = python("-c", "import sophia; from sophia.training.cli import DEMO_CONFIG, read_config; "
                   "print(sophia.__file__); print(read_config(str(DEMO_CONFIG))['net_width'])")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [str(target / "sophia" / "__init__.py"), "32"]
