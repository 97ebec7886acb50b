"""What the report reads from each folder it is given: a run folder (meta, config, training logs, eval/) or a
folder of results JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from ...config import ConfigError, DiTiConfig, PretrainConfig
from ...folders import RESULTS, Result, read_meta, read_run_config
from ...folders.layout import CONFIG, EVAL, FEATURES, LOSS_PER_T, META, METRICS

R = TypeVar("R", bound=Result)

COUNTERFACTUAL_COMMAND = "diti counterfactual {run} --data DIR"  # writes eval/counterfactual.png


class RunInfo:
    """What one run folder holds.

    ``results``: the result files of its eval/ (``diti.folders.results``), typed, and ``raw``: the JSON they
    were read from; ``missing``: files looked for and not found (or unreadable); ``missing_results``: results
    not found, each with the command that writes it. A folder without meta.json and config.yaml that holds
    results JSON itself (``diti disentangle --features ... --out DIR``) is a results folder: no run files.
    """

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        self.missing: list[str] = []
        self.missing_results: dict[type[Result], str] = {}
        self.meta: dict = {}
        self.config = None
        self.partition = None
        self.results: dict[type[Result], Result] = {}
        self.raw: dict[type[Result], object] = {}
        self.eval_pngs: list[Path] = []
        self.other_json: list[Path] = []
        self.results_only = False
        self.eval_folder = path / EVAL
        self._read()

    def result(self, cls: type[R]) -> R | None:
        return self.results.get(cls)

    def _read(self) -> None:
        own_json = any((self.path / cls.FILE).is_file() for cls in RESULTS)
        if not (self.path / META).is_file() and not (self.path / CONFIG).is_file() and own_json:
            self.results_only, self.eval_folder = True, self.path
        else:
            self._read_run_files()
        folder = self.eval_folder
        for cls in RESULTS:
            file = folder / cls.FILE
            if not file.is_file():
                continue
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                self.missing.append(f"{file.relative_to(self.path)} (invalid JSON: {err})")
                continue
            try:
                self.results[cls], self.raw[cls] = cls.from_dict(data), data
            except ValueError as err:
                self.missing.append(f"{file.relative_to(self.path)} (unreadable: {err})")
        if folder.is_dir():
            self.eval_pngs = sorted(folder.glob("*.png"))
            self.other_json = sorted(p for p in folder.glob("*.json") if p.name not in {c.FILE for c in RESULTS})
        for cls in self._expected_results():
            if not (folder / cls.FILE).is_file():  # (an unreadable one is listed in ``missing``)
                self.missing_results[cls] = self.command(cls)

    def _read_run_files(self) -> None:
        try:
            self.meta = read_meta(self.path)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
            self.missing.append(f"{META} ({err})")
        cls = PretrainConfig if self.meta.get("kind") == "pretrain" else DiTiConfig
        if (self.path / CONFIG).is_file():
            try:
                self.config = read_run_config(self.path, cls)
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
                self.missing.append(f"{CONFIG} (unreadable: {err})")
        else:
            self.missing.append(CONFIG)
        if isinstance(self.config, DiTiConfig):
            try:
                self.partition = self.config.partition.build(self.config.diffusion.timesteps)
            except ConfigError as err:
                self.missing.append(f"partition ({err})")
        for name in (METRICS, LOSS_PER_T):
            if not (self.path / name).is_file():
                self.missing.append(f"{name} (written by training)")

    def _expected_results(self) -> list[type[Result]]:
        """The results this kind of folder should have: those of a model for a diti run, those of the DM (the
        attribute loss) for a pretrain run, those of saved codes for a results folder."""
        if self.results_only:
            return [cls for cls in RESULTS if cls.FEATURE_COMMAND]
        of = "dm" if self.meta.get("kind") == "pretrain" else "model"
        return [cls for cls in RESULTS if cls.OF == of]

    def command(self, result: type[Result]) -> str:
        """The command that writes ``result`` for this folder."""
        return (result.FEATURE_COMMAND if self.results_only else result.COMMAND).format(run=self.path)

    def missing_text(self, result: type[Result]) -> str:
        return f"no {result.FILE}: run `{self.command(result)}`"

    @property
    def code(self) -> str | None:
        """'d=16, k=4' from the config; None for a results folder."""
        if self.partition is None:
            return None
        return f"d={self.partition.latent_dim}, k={self.partition.k}"

    def chance(self) -> dict[str, float]:
        """Majority-class share per categorical attribute of the cached test split (RUN/eval/features/)."""
        from ...data import Attributes

        csv = self.eval_folder / FEATURES / "test.attributes.csv"
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


