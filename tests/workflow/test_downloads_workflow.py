"""The download rules through real Snakemake: a tiny registry whose mirror is a local HTTP server on
127.0.0.1 (started and stopped by the test), one download and one extraction job per archive, the anchor
job last, nothing planned again once the tree is there or when it was brought by hand, and the embedded
default's plan without a single download job."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import SNAKEMAKE_TIMEOUT, cli_env, job_counts, make_workdir
from tests.unit.test_downloads import ArchiveServer, make_tgz

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

VOC = "VOCtrainval_11-May-2012.tar"
SBD = "benchmark.tgz"
ANCHOR_RULE = "extract_pascal_voc_VOCtrainval_11_May_2012_tar"


def _plain_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _setup(workdir: Path, server: ArchiveServer) -> dict[str, bytes]:
    archives = {
        VOC: _plain_tar(
            {
                "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": b"jpeg",
                "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
            }
        ),
        SBD: make_tgz({"benchmark_RELEASE/dataset/train.txt": b"2008_000002\n"}),
    }
    for name, data in archives.items():
        server.files[f"/pascal_voc/{name}"] = data
    registry = {
        "datasets": {
            "pascal_voc": {
                "licence": "test",
                "archives": [
                    {
                        "url": f"http://publisher.invalid/{VOC}",
                        "checksum": f"md5:{hashlib.md5(archives[VOC]).hexdigest()}",
                        "provides": ["VOCdevkit/VOC2012/"],
                    },
                    {"url": f"http://publisher.invalid/{SBD}", "provides": ["benchmark_RELEASE/"]},
                ],
            }
        }
    }
    (workdir / "config" / "test_datasets.yaml").write_text(yaml.safe_dump(registry))
    downloads = {
        "registry": "config/test_datasets.yaml",
        "lock": "config/test_datasets.lock.yaml",
        "mirror": server.url,
        "datasets": ["pascal_voc"],
    }
    (workdir / "config" / "downloads.yaml").write_text(yaml.safe_dump({"downloads": downloads}))
    return archives


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    result = subprocess.run(
        command, cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT
    )
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(workdir.glob("logs/**/*.log")))
        raise AssertionError(
            f"snakemake {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{logs}"
        )
    return result


def test_download_rules_fetch_extract_and_then_plan_nothing(tmp_path: Path) -> None:
    server = ArchiveServer().start()
    try:
        workdir = make_workdir(tmp_path, dvc=False)
        archives = _setup(workdir, server)
        with_downloads = ("config/tiny.yaml", "config/downloads.yaml")

        plan = _snakemake(workdir, "downloads", "-n", "--configfile", *with_downloads)
        counts = job_counts(plan.stdout + plan.stderr)
        assert counts == {"download_archive": 2, "extract_archive": 1, ANCHOR_RULE: 1, "downloads": 1}, counts

        _snakemake(workdir, "downloads", "--configfile", *with_downloads)
        raw = workdir / "raw" / "pascal_voc"
        assert (raw / "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg").read_bytes() == b"jpeg"
        assert (raw / "benchmark_RELEASE/dataset/train.txt").is_file()
        assert (raw / ".extracted" / f"{SBD}.json").is_file()
        for name, data in archives.items():  # each archive fetched once, whole, from the mirror
            assert server.sent(f"/pascal_voc/{name}") == len(data), server.log
            receipt = json.loads((workdir / "raw/downloads/pascal_voc" / f"{name}.verified.json").read_text())
            assert receipt["size"] == len(data)
        lock = yaml.safe_load((workdir / "config" / "test_datasets.lock.yaml").read_text())
        assert lock["pascal_voc"][SBD]["sha256"] == hashlib.sha256(archives[SBD]).hexdigest()
        assert (workdir / "logs/downloads/pascal_voc" / f"{VOC}.log").is_file()
        assert (workdir / "logs/benchmarks/downloads/pascal_voc" / f"{VOC}.extract.tsv").is_file()

        # The tree is there now: a second run plans no download or extraction at all.
        again = _snakemake(workdir, "downloads", "-n", "--configfile", *with_downloads)
        counts = job_counts(again.stdout + again.stderr)
        assert not {"download_archive", "extract_archive", ANCHOR_RULE} & set(counts), counts

        # Bring your own copy: a tree already in raw/pascal_voc of a fresh checkout is used as it is.
        (tmp_path / "own").mkdir()
        own = make_workdir(tmp_path / "own", dvc=False)
        _setup(own, server)
        (own / "raw/pascal_voc/VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
        mine = _snakemake(own, "downloads", "-n", "--configfile", *with_downloads)
        counts = job_counts(mine.stdout + mine.stderr)
        assert not {"download_archive", "extract_archive", ANCHOR_RULE} & set(counts), counts
        assert len(server.log) == 2  # the dry runs fetched nothing

        # The embedded default plans no download job.
        default = _snakemake(workdir, "-n", "--configfile", "config/tiny.yaml")
        counts = job_counts(default.stdout + default.stderr)
        assert counts and not any(name.startswith(("download", "extract")) for name in counts), counts
    finally:
        server.stop()
