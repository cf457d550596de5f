"""The campaign's results archive: what it holds, how it is written (in parts the device tool can bring
back), and how it is read again (to resume the next slot, or to merge on the CPU side).

Layout: ``meta/`` (campaign.json, env.json, benchmark*.json, manifest.json), ``done.json`` (every run known
finished, ``preset/cell_sN``) and ``runs/<preset>/<cell>_s<seed>/`` for the runs this slot trained: all their
small files (report, predictions, logs, config, metrics, figures), then, while the size cap allows, the
best/ weights of finished runs and the latest checkpoint of unfinished ones. Never a finished run's
checkpoints, a demo run's synthetic data, or its TFDS build.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

MiB = 1 << 20
SKIPPED_DIRS = ("checkpoints", "synthetic", "tfds")
NAME = "campaign.tar.gz"


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def latest_checkpoint(workdir: pathlib.Path) -> pathlib.Path | None:
    """The newest complete checkpoint folder (orbax writes ``checkpoints/<step>/`` by renaming when done)."""
    steps = [p for p in (workdir / "checkpoints").glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps, key=lambda p: int(p.name)) if steps else None


def run_groups(workdir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """A run's files by kind: ``small`` (always packed), ``weights`` (a finished run's best/weights), and
    ``checkpoint`` (an unfinished run's latest checkpoint; with best/weights too when the checkpoint does not
    store them itself: a resumed run evaluates its best weights at the end)."""
    finished = (workdir / "report.json").is_file()
    weights_dir = workdir / "best" / "weights"
    weights = _files(weights_dir) if weights_dir.is_dir() else []
    small = [
        p
        for p in _files(workdir)
        if p.relative_to(workdir).parts[0] not in SKIPPED_DIRS and weights_dir not in p.parents
    ]
    latest = None if finished else latest_checkpoint(workdir)
    checkpoint = _files(latest) + ([] if (latest / "best").is_dir() else weights) if latest else []
    return {"small": small, "weights": weights if finished else [], "checkpoint": checkpoint}


def _size(paths: Sequence[pathlib.Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def select(workdirs: dict[str, pathlib.Path], cap_bytes: int) -> tuple[list[tuple[pathlib.Path, str]], dict[str, Any]]:
    """The files to pack (path, name in the archive) under ``cap_bytes`` (uncompressed: weights hardly
    compress), and a manifest. Priority: every run's small files; finished runs' weights; unfinished runs'
    latest checkpoints, most advanced first."""
    groups = {key: run_groups(w) for key, w in workdirs.items()}
    chosen: list[tuple[pathlib.Path, str]] = []
    manifest: dict[str, Any] = {"runs": {}, "left_out": []}
    total = 0

    def take(key: str, kind: str) -> None:
        nonlocal total
        paths = groups[key][kind]
        size = _size(paths)
        if not paths:
            return
        if kind != "small" and total + size > cap_bytes:
            manifest["left_out"].append({"run": key, "kind": kind, "bytes": size})
            return
        total += size
        chosen.extend((p, f"runs/{key}/{p.relative_to(workdirs[key]).as_posix()}") for p in paths)
        manifest["runs"][key].setdefault("packed", []).append(kind)

    for key, w in workdirs.items():
        manifest["runs"][key] = {"finished": (w / "report.json").is_file()}
        take(key, "small")
    for key in workdirs:
        if manifest["runs"][key]["finished"]:
            take(key, "weights")
    unfinished = [k for k in workdirs if not manifest["runs"][k]["finished"] and groups[k]["checkpoint"]]
    for key in sorted(unfinished, key=lambda k: -int(latest_checkpoint(workdirs[k]).name)):  # type: ignore[union-attr]
        take(key, "checkpoint")
    manifest["bytes_uncompressed"] = total
    return chosen, manifest


def write(
    out_dir: pathlib.Path,
    files: Sequence[tuple[pathlib.Path, str]],
    meta: dict[str, Any],
    done: Sequence[str],
    part_bytes: int,
) -> list[pathlib.Path]:
    """Writes ``out_dir/campaign.tar.gz``, or ``campaign.tar.gz.00``, ``.01``, ... when it is larger than
    ``part_bytes`` (the pieces concatenated are the archive); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(NAME + "*"):
        old.unlink()
    path = out_dir / NAME
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path, "w:gz") as tar:
        for name, value in [*meta.items(), ("done.json", sorted(done))]:
            staged = pathlib.Path(tmp) / name.replace("/", "_")
            staged.write_text(json.dumps(value, indent=2) + "\n")
            tar.add(staged, arcname=name if name == "done.json" else f"meta/{name}")
        for src, arcname in files:
            if src.is_file():  # a run still writing may have removed a file since it was listed
                tar.add(src, arcname=arcname)
    if path.stat().st_size <= part_bytes:
        return [path]
    parts = []
    with open(path, "rb") as fh:
        while chunk := fh.read(part_bytes):
            part = out_dir / f"{NAME}.{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part)
    path.unlink()
    return parts


def parts_of(path: pathlib.Path) -> list[pathlib.Path]:
    """The file(s) of an archive: itself, or its numbered parts ``path.00``, ``path.01``, ..."""
    if path.is_file():
        return [path]
    parts = sorted(path.parent.glob(path.name + ".[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(f"no archive {path} (nor its parts {path}.00, ...)")
    return parts


def open_archive(path: pathlib.Path, tmp: pathlib.Path) -> tarfile.TarFile:
    """The archive at ``path`` (joined into ``tmp`` first when it is in parts)."""
    parts = parts_of(path)
    if len(parts) > 1:
        joined = tmp / NAME
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        parts = [joined]
    return tarfile.open(parts[0], "r:gz")


def read_json(tar: tarfile.TarFile, name: str, default: Any = None) -> Any:
    try:
        member = tar.extractfile(name)
    except KeyError:
        return default
    return default if member is None else json.loads(member.read())


def run_members(tar: tarfile.TarFile) -> dict[str, list[tarfile.TarInfo]]:
    """The archive's run files by run key (``preset/cell_sN``)."""
    out: dict[str, list[tarfile.TarInfo]] = {}
    for m in tar.getmembers():
        parts = m.name.split("/")
        if parts[0] == "runs" and len(parts) > 3 and m.isfile():
            out.setdefault(f"{parts[1]}/{parts[2]}", []).append(m)
    return out


def extract_runs(
    tar: tarfile.TarFile, runs_root: pathlib.Path, *, replace: bool, log: Callable[[str], None] = print
) -> list[str]:
    """Unpacks the archive's runs under ``runs_root``, each whole: a finished one, or an unfinished one with
    its checkpoint (one without is useless to resume, and left out). ``replace=False`` (resuming a slot)
    keeps a run already here; ``replace=True`` (merging) writes over it, unless it finished here and the
    archive's copy did not. Returns the keys written."""
    written = []
    for key, members in run_members(tar).items():
        dest = runs_root / key
        names = {m.name.split("/", 3)[3] for m in members}
        finished = "report.json" in names
        if not finished and not any(n.startswith("checkpoints/") for n in names):
            log(f"{key}: unfinished and packed without its checkpoint: left out")
            continue
        if dest.exists():
            if not replace or ((dest / "report.json").is_file() and not finished):
                log(f"{key}: already in {runs_root}, kept as it is")
                continue
            shutil.rmtree(dest)
        for m in members:
            tar.extract(m.replace(name=m.name.split("/", 3)[3]), dest, filter="data")
        written.append(key)
    return written
