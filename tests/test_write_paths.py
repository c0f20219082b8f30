"""Where poisonbench writes (issue 68, item 5): no directory of a results workspace is written through a symbolic
link; a figure that cannot be written is one line and leaves nothing half-made; a name that is not UTF-8 never
reaches a job script; a manifest's or a grid's values are printed escaped."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.experiment.records import RunStore
from poisonbench.poisons.spec import SPEC_FIELDS
from tests.conftest import files_under, one_line_error
from tests.report_records import make_record, write_records

ESC = "\x1b]0;pwned\x07\x1b[2J"  # retitles the terminal and clears it, when printed raw


def rho_records() -> list[dict]:
    """Enough for `report figure rho`: clean and ρ = 0.5 runs of one configuration, two trials."""
    return [make_record(rho=rho, trial=t) for rho in (0.0, 0.5) for t in (0, 1)]


def linked(root: Path, name: str, elsewhere: Path) -> Path:
    """`root/name` made a symbolic link to the directory `elsewhere` (its parents created)."""
    elsewhere.mkdir(parents=True, exist_ok=True)
    link = root / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    return link


# ----------------------------------------------------------------------------------------------- 1. no links

def test_report_figure_refuses_a_figures_link_and_writes_nothing_through_it(cli, tmp_path):
    root = write_records(tmp_path / "res", rho_records())
    outside = tmp_path / "outside"
    link = linked(root, "figures", outside)
    code, out, err = cli("report", "figure", "rho", "--results", root)
    one_line_error(code, err, f"{str(link)!r} is a symbolic link", "remove the link")
    assert files_under(outside) == [] and out == ""


def test_report_table_matrix_refuses_a_figures_link_for_its_heatmap(cli, tmp_path):
    root = write_records(tmp_path / "res", rho_records())
    outside = tmp_path / "outside"
    link = linked(root, "figures", outside)
    code, _, err = cli("report", "table", "matrix", "--results", root)
    one_line_error(code, err, f"{str(link)!r} is a symbolic link")
    assert files_under(outside) == []
    assert cli("report", "table", "2", "--results", root)[0] == 0  # a table without a PNG does not care


def test_records_unpack_refuses_a_runs_link_and_writes_nothing(cli, tmp_path):
    source = write_records(tmp_path / "src", rho_records())
    packed = tmp_path / "r.jsonl.gz"
    assert cli("records", "pack", source, packed)[0] == 0
    target, outside = tmp_path / "ws", tmp_path / "outside"
    link = linked(target, "runs", outside)
    code, _, err = cli("records", "unpack", packed, target)
    one_line_error(code, err, f"{str(link)!r} is a symbolic link")
    assert files_under(outside) == []


def _put(root):
    RunStore(root).put(make_record())


def _ensure_runs(root):
    RunStore(root).ensure_writable()


def _failure(root):
    RunStore(root).put_failure("0123456789abcdef", {}, ValueError("boom"))


def _craft_dirs(root):
    from poisonbench.poisons.store import check_writable

    check_writable(root)


def _checkpoint(root):
    from poisonbench.engine.checkpoints import checkpoint_path

    checkpoint_path(root, "0123456789abcdef")


def _run_lock(root):
    from poisonbench.experiment.defend import run_lock

    run_lock(RunStore(root), "0123456789abcdef")


def _surrogate(root):
    from poisonbench.engine.model_cache import model_path

    model_path(root, "surrogates", "0123456789abcdef")


def _generator(root):
    from poisonbench.attacks.deepconfuse import generator_path

    generator_path(root, "mnist", "0" * 64)


@pytest.mark.parametrize("name,write", [
    ("runs", _put), ("runs", _ensure_runs), ("failures", _failure), ("poisons", _craft_dirs),
    ("partial", _craft_dirs), ("locks", _craft_dirs), ("partial", _checkpoint), ("partial/runs", _checkpoint),
    ("locks", _run_lock), ("surrogates", _surrogate), ("generators", _generator),
], ids=lambda v: v if isinstance(v, str) else v.__name__.strip("_"))
def test_every_workspace_directory_written_into_refuses_a_link(name, write, tmp_path):
    root, outside = tmp_path / "res", tmp_path / "outside"
    root.mkdir()
    link = linked(root, name, outside)
    with pytest.raises(PoisonbenchError, match="is a symbolic link") as caught:
        write(root)
    assert str(link) in str(caught.value) and "\n" not in str(caught.value)
    assert list(outside.iterdir()) == []


def test_a_workspace_that_is_itself_a_link_is_still_written(tmp_path):
    """Only the directories inside the workspace are checked: `--results` may name a link (a scratch disk)."""
    real = tmp_path / "scratch"
    real.mkdir()
    (tmp_path / "res").symlink_to(real, target_is_directory=True)
    path = RunStore(tmp_path / "res").put(make_record())
    assert (real / "runs" / path.name).is_file()


def test_emit_sbatch_refuses_a_slurm_link(cli, tiny_npz, tmp_path):
    from tests.test_probe_grid_slurm import write_grid

    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    root, outside = tmp_path / "res", tmp_path / "outside"
    link = linked(root, "slurm", outside)
    code, _, err = cli("sweep", "run", grid, "--results", root, "--emit-sbatch", tmp_path / "job.sbatch")
    one_line_error(code, err, f"{str(link)!r} is a symbolic link")
    assert not (tmp_path / "job.sbatch").exists()


# ----------------------------------------------------------------------------------------------- 2. figure writes

def test_a_figure_under_a_file_is_one_line_and_creates_nothing(cli, tmp_path):
    root = write_records(tmp_path / "res", rho_records())
    (tmp_path / "afile").write_text("")
    before = files_under(tmp_path)
    out = tmp_path / "afile" / "figs"
    code, _, err = cli("report", "figure", "rho", "--results", root, "--out", out)
    one_line_error(code, err, f"cannot write figure to '{out}/rho_", f"{str(tmp_path / 'afile')!r} is a file")
    assert files_under(tmp_path) == before


def test_a_full_disk_is_one_line_naming_the_figure_and_leaves_no_directory(cli, tmp_path, monkeypatch):
    root = write_records(tmp_path / "res", rho_records())
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "out" / "figs"
    code, _, err = cli("report", "figure", "rho", "--results", root, "--out", out)
    one_line_error(code, err, f"cannot write figure to '{out}/rho_", os.strerror(errno.ENOSPC))
    assert not (tmp_path / "out").exists()  # neither the PNG, its temporary file, nor the directories made for it


def test_a_full_disk_in_the_default_figures_directory_leaves_no_empty_directory(cli, tmp_path, monkeypatch):
    root = write_records(tmp_path / "res", rho_records())
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst, *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) if str(dst).endswith(".png") else real(src, dst, *a, **k))
    code, _, err = cli("report", "figure", "rho", "--results", root)
    one_line_error(code, err, f"cannot write figure to '{root / 'figures'}/rho_", "No space left")
    assert not (root / "figures").exists()


def test_a_read_only_directory_is_one_line(cli, tmp_path, read_only):
    root = write_records(tmp_path / "res", rho_records())
    ro = read_only(tmp_path / "ro")
    code, _, err = cli("report", "figure", "rho", "--results", root, "--out", ro / "figs")
    one_line_error(code, err, f"cannot write figure to '{ro / 'figs'}/rho_")
    assert not (ro / "figs").exists()


# ----------------------------------------------------------------------------------------------- 3. names not UTF-8

def test_a_grid_file_name_that_is_not_utf8_is_refused_in_one_line_before_a_script_is_written(cli, tiny_npz,
                                                                                            tmp_path):
    from tests.test_probe_grid_slurm import write_grid

    name = os.fsdecode(b"g\xff.toml")  # the byte 0xff is not UTF-8: Python names it by a lone surrogate
    try:
        grid = write_grid(tmp_path / name, tiny_npz)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses a file name that is not UTF-8")
    script = tmp_path / "job.sbatch"
    code, out, err = cli("sweep", "run", grid, "--results", tmp_path / "res", "--emit-sbatch", script)
    one_line_error(code, err, "g\\udcff", "not UTF-8")
    assert not script.exists() and not (tmp_path / "res").exists()


# ----------------------------------------------------------------------------------------------- 4. printed escaped

def write_manifest(root: Path, **fields) -> str:
    manifest = {k: 0 for k in SPEC_FIELDS}
    manifest.update({"attack": "pgd", "params": {}, "eps": 0.3, "budget": 0.5, "seed": 0, "dataset": "mnist",
                     "poison_id": "0123456789abcdef", "count": 3, "tensor_sha256": "0" * 64, **fields})
    path = root / "poisons" / manifest["poison_id"] / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return manifest["poison_id"]


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["show", "0123456789abcdef"]])
def test_poisons_list_and_show_print_a_manifests_control_characters_escaped(args, cli, tmp_path):
    root = tmp_path / "res"
    write_manifest(root, dataset=f"mnist{ESC}\x7f", attack="[bold red]pgd")
    code, out, err = cli("poisons", *args, "--results", root)
    assert code == 0, err
    assert not any(c in out for c in "\x1b\x07\x7f"), repr(out)
    assert ("\\u001b" if "--json" in args or "show" in args else "\\x1b") in out
    if args == ["list"]:
        assert "[bold red]pgd" in out  # shown as it is, not read as markup


def test_sweep_plan_print_commands_escapes_control_characters(cli, tiny_npz, tmp_path):
    from tests.test_probe_grid_slurm import write_grid

    data = tmp_path / f"d{ESC}.npz"
    shutil.copy(tiny_npz, data)
    grid = write_grid(tmp_path / "g.toml", str(data).replace("\x1b", "\\u001b").replace("\x07", "\\u0007"))
    code, out, err = cli("sweep", "plan", grid, "--results", tmp_path / "res", "--print-commands")
    assert code == 0, err
    assert "poisonbench defend" in out and "\\x1b]0;pwned\\x07" in out
    assert not any(c in out for c in "\x1b\x07"), repr(out)
