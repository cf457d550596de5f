"""What a bare GPU machine needs, gathered into git-ignored folders for the device tool's ``carry``: the wheels
it lacks (.whl/), the pretrained backbone (weights/), the HAM10000 build (data/tfds), and a resume bundle
(.campaign/resume.tar.gz: the finished runs' names and, if they fit, unfinished runs' latest checkpoints).
Everything that travels (the working tree and the carried folders) must stay under the tool's 64 MiB."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from campaign import archive

MiB = archive.MiB
LIMIT = 64 * MiB
MARGIN = 1 * MiB  # files other developers add to the tree before the call
CARRY = (".whl", "weights", "data/tfds", ".campaign")
PRETRAINED = "mobilenet_v3_small-047dcff4-features.pth"


def tree_bytes(repo: pathlib.Path) -> int:
    """Bytes of the working tree that travels: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = (repo / name for name in out.split("\0") if name)
    return sum(p.lstat().st_size for p in paths if p.is_file() or p.is_symlink())


def dir_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def sync_wheels(src: pathlib.Path, dest: pathlib.Path) -> int:
    """dest/ holds exactly src's wheels (and README); returns how many."""
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {src}")
    dest.mkdir(parents=True, exist_ok=True)
    keep = {w.name for w in wheels} | {"README.md"}
    for old in dest.iterdir():
        if old.name not in keep:
            old.unlink()
    for w in [*wheels, src / "README.md"]:
        if w.is_file() and (not (dest / w.name).is_file() or (dest / w.name).stat().st_size != w.stat().st_size):
            shutil.copy2(w, dest / w.name)
    return len(wheels)


def data_built(data_dir: pathlib.Path) -> bool:
    return any(data_dir.glob("ham10000/*/*/dataset_info.json"))


def resume_bundle(runs_root: pathlib.Path, dest: pathlib.Path, room: int, log: Callable[[str], None]) -> int:
    """Writes ``dest`` (a campaign archive) from the merged runs: every finished run's name in done.json, and
    unfinished runs' latest checkpoints (with their best weights) while they fit in ``room`` bytes."""
    runs = {f"{d.parent.name}/{d.name}": d for d in sorted(runs_root.glob("*/*_s*")) if d.is_dir()}
    done = [k for k, d in runs.items() if (d / "report.json").is_file()]
    unfinished = {k: d for k, d in runs.items() if k not in done and archive.latest_checkpoint(d)}
    files, manifest = archive.select(unfinished, room)
    for item in manifest["left_out"]:
        log(
            f"resume bundle: {item['run']} left out ({item['bytes'] / MiB:.1f} MiB over the room left): "
            "it restarts from its first epoch on the GPU"
        )
    resumable = [k for k, v in manifest["runs"].items() if "checkpoint" in v.get("packed", [])]
    files = [(p, a) for p, a in files if a.split("/", 3)[1] + "/" + a.split("/", 3)[2] in resumable]
    archive.write(dest.parent, files, {"manifest.json": manifest}, done, part_bytes=LIMIT)
    (dest.parent / archive.NAME).rename(dest)
    log(
        f"resume bundle: {dest} ({dest.stat().st_size / MiB:.2f} MiB): {len(done)} finished runs named, "
        f"{len(resumable)} unfinished with their checkpoint"
    )
    return dest.stat().st_size


def prepare(
    repo: pathlib.Path,
    *,
    wheels: pathlib.Path,
    pretrained: pathlib.Path,
    data_dir: pathlib.Path,
    runs_root: pathlib.Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fills the carried folders and checks the total against 64 MiB; returns the sizes and the carry list."""
    n = sync_wheels(wheels, repo / ".whl")
    (repo / "weights").mkdir(exist_ok=True)
    if not pretrained.is_file():
        raise FileNotFoundError(f"pretrained backbone {pretrained} not found")
    if not (repo / "weights" / pretrained.name).is_file():
        shutil.copy2(pretrained, repo / "weights" / pretrained.name)
    if not data_built(data_dir):
        raise FileNotFoundError(
            f"no HAM10000 build in {data_dir}: caco-jax prepare-data --manual_dir "
            f"../shared/data/ham10000_real --data_dir {data_dir}"
        )
    if data_dir.resolve() != (repo / "data" / "tfds").resolve():
        raise ValueError(f"the build must be in {repo / 'data' / 'tfds'} (the carried folder), not {data_dir}")
    bundle = repo / ".campaign" / "resume.tar.gz"
    bundle.parent.mkdir(exist_ok=True)
    bundle.unlink(missing_ok=True)
    sizes = {"tree": tree_bytes(repo), **{c: dir_bytes(repo / c) for c in CARRY[:-1]}}
    room = LIMIT - MARGIN - sum(sizes.values()) - 64 * 1024  # the bundle's own small files
    sizes[".campaign"] = resume_bundle(runs_root, bundle, max(0, room), log) if runs_root.is_dir() else 0
    if not runs_root.is_dir():
        bundle.unlink(missing_ok=True)
    total = sum(sizes.values())
    for name, size in sizes.items():
        log(f"  {name:12s} {size / MiB:6.2f} MiB")
    log(f"  {'total':12s} {total / MiB:6.2f} MiB of {LIMIT / MiB:.0f} ({n} wheels)")
    if total > LIMIT:
        raise ValueError(f"{total / MiB:.2f} MiB would travel, over the device tool's {LIMIT / MiB:.0f} MiB")
    return {"sizes": sizes, "total": total, "carry": list(CARRY), "resume": bundle if bundle.is_file() else None}
