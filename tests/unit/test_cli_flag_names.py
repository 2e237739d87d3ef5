"""One flag name per idea: ``--time-budget`` (``--budget-s``), ``--engine`` (``--cuda-graph``),
``--quiet`` (``--verbose``), ``--memory-limit-gb`` (``--max-memory-gb``). The old names still parse
to the same values for one release, each with a warning naming the new one; the new names do not warn."""

from __future__ import annotations

import pytest

from convlstm_dist.cli import build_parser


def parse(argv, capsys):
    args = build_parser().parse_args(argv)
    return args, capsys.readouterr().err


@pytest.mark.parametrize("cmd,extra,dest", [
    (["train", "--config", "r.yaml"], [], "time_budget"),
    (["skill-report", "--config", "r.yaml"], [], "budget_s"),
    (["table1", "--out", "d"], [], "budget_s"),
])
def test_time_budget_and_its_deprecated_alias(cmd, extra, dest, capsys):
    new, err = parse([*cmd, "--time-budget", "120", *extra], capsys)
    assert getattr(new, dest) == 120.0 and err == ""
    old, err = parse([*cmd, "--budget-s", "120", *extra], capsys)
    assert getattr(old, dest) == 120.0
    assert "--budget-s is deprecated" in err and "use --time-budget" in err


def test_table1_still_requires_a_time_budget(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["table1", "--out", "d"])
    assert exc.value.code == 2 and "--time-budget" in capsys.readouterr().err


def test_engine_and_the_deprecated_cuda_graph_switches(capsys):
    args, err = parse(["train", "--config", "r.yaml", "--local", "--engine", "graph"], capsys)
    assert args.engine == "graph" and args.cuda_graph is None and err == ""
    args, err = parse(["train", "--config", "r.yaml", "--local", "--cuda-graph"], capsys)
    assert args.cuda_graph is True and "--cuda-graph is deprecated" in err and "--engine graph" in err
    args, err = parse(["train", "--config", "r.yaml", "--local", "--no-cuda-graph"], capsys)
    assert args.cuda_graph is False and "--no-cuda-graph is deprecated" in err and "--engine eager" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--config", "r.yaml", "--engine", "fastest"])


def test_memory_limit_and_its_deprecated_alias(capsys):
    args, err = parse(["train", "--config", "r.yaml", "--local", "--memory-limit-gb", "3"], capsys)
    assert args.memory_limit_gb == 3.0 and err == ""
    args, err = parse(["train", "--config", "r.yaml", "--local", "--max-memory-gb", "3"], capsys)
    assert args.memory_limit_gb == 3.0 and "--max-memory-gb is deprecated" in err and "--memory-limit-gb" in err


def test_quiet_and_the_deprecated_verbose(capsys):
    args, err = parse(["skill-report", "--config", "r.yaml"], capsys)
    assert args.quiet is False and err == ""  # progress by default, as in train/tune/ingest
    args, err = parse(["skill-report", "--config", "r.yaml", "--quiet"], capsys)
    assert args.quiet is True and err == ""
    args, err = parse(["skill-report", "--config", "r.yaml", "--verbose"], capsys)
    assert args.quiet is False and "--verbose is deprecated" in err


def test_the_flags_reach_the_config(tmp_path):
    """``--engine`` and ``--memory-limit-gb`` set ``train.engine`` / ``data.memory_limit_gb``, and
    ``train --local`` refuses frames above ``data.memory_limit_gb`` once it is set (48 GiB otherwise)."""
    from convlstm_dist.commands import train as train_cmd
    from convlstm_dist.config import load_config
    from convlstm_dist.errors import UserError
    from convlstm_dist.train import local
    from synthetic import make_archive

    args = build_parser().parse_args(["train", "--config", "pipelines/radar_smoke.yaml", "--engine", "eager",
                                      "--max-memory-gb", "0.5", "--time-budget", "7"])
    cfg = train_cmd.train_config(args)
    assert (cfg.train.engine, cfg.data.memory_limit_gb, cfg.train.time_budget_s) == ("eager", 0.5, 7.0)

    archive = tmp_path / "a.zarr"
    make_archive(archive, n=30, h=32, w=32)
    base = ["model.height=32", "model.width=32", f"data.archive={archive}", "data.split.block_hours=1.0",
            "tracking.enabled=false"]
    smoke = "pipelines/radar_smoke.yaml"
    with pytest.raises(UserError, match=r"limit 1e-06 GiB \(--memory-limit-gb, data.memory_limit_gb\)"):
        local.train_local(load_config(smoke, [*base, "data.memory_limit_gb=1e-6"]), tmp_path, device="cpu",
                          progress=False)
    assert local.LOCAL_MEMORY_LIMIT_GB == 48.0
