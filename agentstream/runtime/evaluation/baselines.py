"""Stored baselines: a run's full JSON, keyed by agent, version and dataset hash.

Layout: ``<dir>/<dataset hash, 16 hex>/<agent>@<version>.json``. The dataset
hash in the path means an edited dataset never silently compares against a
baseline measured on other cases: its lookup simply finds none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from agentstream.runtime.core.errors import ConfigError
from agentstream.runtime.evaluation.results import EvalRun, decode_run, encode_run

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _name(agent: str, version: str) -> str:
    return f"{_SAFE.sub('_', agent)}@{_SAFE.sub('_', version)}.json"


def baseline_path(root: Path, dataset_hash: str, agent: str, version: str) -> Path:
    return root / dataset_hash[:16] / _name(agent, version)


def save_baseline(root: Path, run: EvalRun) -> Path:
    path = baseline_path(root, run.dataset_hash, run.agent, run.version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encode_run(run))
        os.replace(tmp, path)  # a reader never sees half a baseline
    except OSError as exc:
        raise ConfigError(f"cannot store the baseline in {path}: {exc.strerror or exc}") from None
    return path


def read_run(path: Path) -> EvalRun:
    try:
        return decode_run(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not an agentstream evaluation run: {exc}") from None


def load_baseline(root: Path, ref: str, *, dataset_hash: str, agent: str) -> EvalRun:
    """``ref``: a version stored under ``root`` for this dataset, or a path to a run's JSON."""
    as_path = Path(ref)
    if ref.endswith(".json") or as_path.is_file():
        return read_run(as_path)
    path = baseline_path(root, dataset_hash, agent, ref)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        hint = f"stored for this dataset: {', '.join(known)}" if known else "none stored for this dataset"
        raise ConfigError(f"no baseline {agent}@{ref} for dataset {dataset_hash[:12]} in {root} ({hint}); "
                          "run with --save-baseline first")
    return read_run(path)
