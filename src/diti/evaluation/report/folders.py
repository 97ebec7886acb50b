"""What the report reads from each folder it is given: a run folder (meta, config, training logs, eval/) or a
folder of results JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...config import ConfigError, DiTiConfig, PretrainConfig
from ...training.run import read_meta, read_run_config

EVAL_DIR = "eval"
KNOWN_JSON = ("probe.json", "disentangle.json", "fidelity.json", "attribute_loss.json")

# The command that writes each result ({run}: the run folder as given).
COMMANDS = {
    "probe.json": "diti probe {run} --data DIR",
    "disentangle.json": "diti disentangle {run} --data DIR",
    "fidelity.json": "diti fidelity {run} --data DIR",
    "attribute_loss.json": "diti attribute-loss --dm {run} --data DIR --out {run}/eval",
    "counterfactual.png": "diti counterfactual {run} --data DIR",
}
FEATURE_COMMANDS = {  # for a folder of results without a run (codes measured with --features)
    "probe.json": "diti probe --features FILE --test-features FILE --out {run}/probe.json",
    "disentangle.json": "diti disentangle --features FILE --test-features FILE --out {run}",
}

class RunInfo:
    """What one run folder holds.

    ``missing``: files looked for and not found (or unreadable); ``missing_results``: evaluation results not
    found, each with the command that writes it. A folder without meta.json and config.yaml that holds
    results JSON itself (``diti disentangle --features ... --out DIR``) is a results folder: no run files.
    """

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        self.missing: list[str] = []
        self.missing_results: dict[str, str] = {}
        self.meta: dict = {}
        self.config = None
        self.partition = None
        self.json: dict[str, dict] = {}
        self.eval_pngs: list[Path] = []
        self.other_json: list[Path] = []
        self.results_only = False
        self.eval_folder = path / EVAL_DIR
        self._read()

    def _read(self) -> None:
        own_json = any((self.path / n).is_file() for n in KNOWN_JSON)
        if not (self.path / "meta.json").is_file() and not (self.path / "config.yaml").is_file() and own_json:
            self.results_only, self.eval_folder = True, self.path
        else:
            self._read_run_files()
        folder = self.eval_folder
        for name in KNOWN_JSON:
            file = folder / name
            if not file.is_file():
                continue
            try:
                self.json[name] = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                self.missing.append(f"{file.relative_to(self.path)} (invalid JSON: {err})")
        if folder.is_dir():
            self.eval_pngs = sorted(folder.glob("*.png"))
            self.other_json = sorted(p for p in folder.glob("*.json") if p.name not in KNOWN_JSON)
        for name in self._expected_results():
            if not (folder / name).is_file():  # (an unreadable one is listed in ``missing``)
                self.missing_results[name] = self.command(name)

    def _read_run_files(self) -> None:
        try:
            self.meta = read_meta(self.path)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
            self.missing.append(f"meta.json ({err})")
        cls = PretrainConfig if self.meta.get("kind") == "pretrain" else DiTiConfig
        if (self.path / "config.yaml").is_file():
            try:
                self.config = read_run_config(self.path, cls)
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
                self.missing.append(f"config.yaml (unreadable: {err})")
        else:
            self.missing.append("config.yaml")
        if isinstance(self.config, DiTiConfig):
            try:
                self.partition = self.config.partition.build(self.config.diffusion.timesteps)
            except ConfigError as err:
                self.missing.append(f"partition ({err})")
        for name in ("metrics.jsonl", "loss_per_t.json"):
            if not (self.path / name).is_file():
                self.missing.append(f"{name} (written by training)")

    def _expected_results(self) -> list[str]:
        """The results this kind of folder should have: a DM (pretrain run) only has an attribute loss."""
        if self.results_only:
            return list(FEATURE_COMMANDS)
        if self.meta.get("kind") == "pretrain":
            return ["attribute_loss.json"]
        return ["probe.json", "disentangle.json", "fidelity.json"]

    def command(self, result: str) -> str:
        table = FEATURE_COMMANDS if self.results_only else COMMANDS
        return table[result].format(run=self.path)

    def missing_text(self, result: str) -> str:
        return f"no {result}: run `{self.command(result)}`"

    @property
    def code(self) -> str | None:
        """'d=16, k=4' from the config; None for a results folder."""
        if self.partition is None:
            return None
        return f"d={self.partition.latent_dim}, k={self.partition.k}"

    def chance(self) -> dict[str, float]:
        """Majority-class share per categorical attribute of the cached test split (RUN/eval/features/)."""
        from ...data import Attributes

        csv = self.eval_folder / "features" / "test.attributes.csv"
        if not csv.is_file():
            return {}
        meta = csv.with_suffix(".json")
        try:
            classes = json.loads(meta.read_text())["classes"] if meta.is_file() else None
            attrs = Attributes.from_csv(csv, classes=classes)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return {}
        values = np.asarray(attrs.values)
        return {n: float(np.bincount(values[:, i].astype(np.int64)).max() / len(values))
                for i, n in enumerate(attrs.names) if attrs.is_categorical(i) and len(values)}


def run_names(runs: Sequence[Path]) -> list[str]:
    """Folder names; a name shared by several runs gets its parent folder in front (parent/name)."""
    names = [p.resolve().name or str(p) for p in runs]
    out = []
    for p, n in zip(runs, names, strict=True):
        out.append(f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n)
    if len(set(out)) < len(out):  # still ambiguous: number them
        out = [f"{n} ({i + 1})" for i, n in enumerate(out)]
    return out


