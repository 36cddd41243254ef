"""Run the leaderboard grid: explainer models × prompt styles × methods, plus baselines.

Every cell of the grid is one explain configuration (its own key space in the run
directory): `run_grid_async` explains the selected units with each through
`api.explain_async`, the baselines once each (they ask no model, so neither the model
nor the prompt style changes them), then scores every explanation of those units with
each scorer (`api.score_many_async`). All of it resumes: a rerun skips what is done.

    grid = Grid.parse(explainers="hf:embedded,gpt-4o-mini", prompts="rows,summary")
    result = await run_grid_async(config, grid, api.parse_scorers("simulation"))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError, field_validator

from neuroscribe import api
from neuroscribe.config import ExplainSection, RunConfig
from neuroscribe.engine import JobSummary
from neuroscribe.errors import ConfigError
from neuroscribe.explainer.registry import EXPLAINERS, explainer_factory
from neuroscribe.leaderboard import BASELINES, DEFAULT_METHOD, row_label
from neuroscribe.llm.base import EMBEDDED_SPEC
from neuroscribe.prompts.explain_styles import resolve_style
from neuroscribe.rundir import RunDir


def split_list(text: str | Sequence[str] | None) -> list[str]:
    """`"a, b,,c"` → ["a", "b", "c"] (duplicates dropped, order kept)."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


class Grid(BaseModel):
    """What the leaderboard runs: every explainer × prompt × method, and each baseline."""

    explainers: list[str] = Field(default_factory=lambda: [EMBEDDED_SPEC])  # model specs
    prompts: list[str] = Field(default_factory=lambda: [resolve_style("rows")])  # versions
    methods: list[str] = Field(default_factory=lambda: [DEFAULT_METHOD])  # explainer names
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES))

    @field_validator("prompts")
    @classmethod
    def _styles(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(resolve_style(p) for p in v))

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in EXPLAINERS:
                raise ValueError(
                    f"unknown explainer method {m!r}; choose from {', '.join(EXPLAINERS)}"
                )
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: list[str]) -> list[str]:
        for b in v:
            if b not in BASELINES:
                raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
        return v

    @classmethod
    def parse(
        cls,
        explainers: str | None = None,
        prompts: str | None = None,
        methods: str | None = None,
        baselines: str | None = None,
    ) -> Grid:
        """The grid from comma lists (None: the default). A baseline named among the
        methods runs once, as a baseline. Bad names are ConfigErrors naming the flag."""
        data: dict[str, list[str]] = {}
        for key, text in (("explainers", explainers), ("prompts", prompts),
                          ("methods", methods), ("baselines", baselines)):  # fmt: skip
            if text is not None:
                data[key] = split_list(text)
        if "methods" in data:
            moved = [m for m in data["methods"] if m in BASELINES]
            data["methods"] = [m for m in data["methods"] if m not in BASELINES]
            if moved:
                data["baselines"] = list(dict.fromkeys([*data.get("baselines", BASELINES), *moved]))
        flags = {"explainers": "--explainer", "prompts": "--explain-prompt",
                 "methods": "--explainer-method", "baselines": "--baselines"}  # fmt: skip
        try:
            grid = cls.model_validate(data)
        except ValidationError as e:
            msgs = [
                f"{flags.get(str(err['loc'][0]), err['loc'][0])}: "
                + err["msg"].removeprefix("Value error, ")
                for err in e.errors()
            ]
            raise ConfigError("; ".join(msgs)) from None
        if grid.methods and not (grid.explainers and grid.prompts):
            raise ConfigError("--explainer and --explain-prompt need at least one value each")
        if not grid.cells_count():
            raise ConfigError(
                "the leaderboard grid is empty: name an explainer method or a baseline"
            )
        return grid

    def cells_count(self) -> int:
        return len(self.explainers) * len(self.prompts) * len(self.methods) + len(self.baselines)


@dataclass
class GridCell:
    """One explain configuration of the grid."""

    label: str  # as the leaderboard labels its row
    method: str
    model: str
    prompt: str
    config: RunConfig

    @property
    def baseline(self) -> bool:
        return self.method in BASELINES


def _with_explain(config: RunConfig, **changes: object) -> RunConfig:
    data = config.explain.model_dump()
    settings = dict(data.pop("settings"))
    if "prompt" in changes:
        settings["prompt"] = changes.pop("prompt")
    try:
        section = ExplainSection.model_validate({**data, **changes, "settings": settings})
    except ValidationError as e:
        msgs = (err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ConfigError("; ".join(msgs)) from None
    return config.model_copy(update={"explain": section})


def grid_cells(config: RunConfig, grid: Grid) -> list[GridCell]:
    """The grid's configurations: `config` with its explain section changed per cell.

    Model cells in the order explainer × prompt × method, then the baselines (their
    configuration holds no model and no prompt: they run once whatever the grid).
    """
    cells = []
    for model in grid.explainers:
        for prompt in grid.prompts:
            for method in grid.methods:
                cfg = _with_explain(config, model=model, explainer=method, prompt=prompt)
                cells.append(GridCell(row_label(method, prompt, model), method, model, prompt, cfg))
    # A baseline still gets a model spec (the stage hands every explainer its model; a
    # baseline never calls it): the grid's first, so nothing else is opened.
    model = grid.explainers[0] if grid.explainers else config.explain.model
    for b in grid.baselines:
        cfg = _with_explain(config, model=model, explainer=b)
        cells.append(GridCell(b, b, model, "", cfg))
    return cells


def _check(cells: Sequence[GridCell]) -> None:
    """What would fail halfway through the grid, refused before anything runs."""
    for c in cells:
        cls = explainer_factory(c.method)
        n = c.config.explain.settings.n_samples
        if getattr(cls, "selects", False) and n != 1:
            raise ConfigError(
                f"{c.method} keeps one explanation per unit; --n-explanations must be 1 "
                f"(not {n}) when the grid has {c.method}"
            )


@dataclass
class GridResult:
    """What `run_grid_async` did: each cell's explain summary, then each scorer's."""

    cells: list[GridCell]
    explained: list[JobSummary] = field(default_factory=list)
    scored: list[JobSummary] = field(default_factory=list)

    @property
    def config_hashes(self) -> list[str]:
        """The explain key spaces of the grid, in grid order."""
        return [s.config_hash for s in self.explained]


# The explain stage warns when its configuration differs from the last explain run's: in
# a grid every cell differs from the one before on purpose (its own key space).
_KEY_SPACE_CHANGE = "explain: the configuration differs from the last explain run"


def _expected_change(text: str) -> bool:
    return text.startswith(_KEY_SPACE_CHANGE)


class _DropKeySpaceChanges(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _expected_change(record.getMessage())


@contextmanager
def _grid_quiet(hooks: api.Hooks) -> Iterator[api.Hooks]:
    """Hooks (and the engine's log) without the grid's expected key-space warnings."""

    def stage(summary: JobSummary) -> None:
        summary.warnings = [w for w in summary.warnings if not _expected_change(w)]
        hooks.stage(summary)

    logger = logging.getLogger("neuroscribe.engine")
    quiet = _DropKeySpaceChanges()
    logger.addFilter(quiet)
    try:
        yield api.Hooks(message=hooks.message, stage=stage)
    finally:
        logger.removeFilter(quiet)


async def run_grid_async(
    config: RunConfig,
    grid: Grid,
    scorers: Sequence[tuple[str, str | None]],
    hooks: api.Hooks | None = None,
) -> GridResult:
    """Record if missing, explain with every grid cell, then score with every scorer.

    `scorers` as `api.parse_scorers` returns them. Resumable at any point; one lock on
    the run directory for the whole grid.
    """
    hooks = hooks or api.Hooks()
    cells = grid_cells(config, grid)
    _check(cells)
    score_configs = api.scorer_configs(config, scorers)
    selection = [
        api.selection_spec(c.config)
        for c in cells
        if getattr(explainer_factory(c.method), "selects", False)
    ]
    api.check_prices(
        config,
        [*grid.explainers, *(c.score.model for c in score_configs), *selection],
    )
    result = GridResult(cells)
    with RunDir(config.run_dir).lock(), _grid_quiet(hooks) as quiet:
        api.record_if_missing(config, hooks)
        records = api.load_units(config)
        for i, cell in enumerate(cells, start=1):
            # Each cell is its own explain key space; the run keeps every one of them.
            hooks.message(f"leaderboard {i}/{len(cells)}: explaining with {cell.label}")
            result.explained.append(await api.explain_async(cell.config, records, quiet))
        result.scored = await api.score_many_async(config, scorers, records, hooks)
    return result


def run_grid(
    config: RunConfig,
    grid: Grid,
    scorers: Sequence[tuple[str, str | None]],
    hooks: api.Hooks | None = None,
) -> GridResult:
    return asyncio.run(run_grid_async(config, grid, scorers, hooks))
