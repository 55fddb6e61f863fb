"""The scenario's model tree: every knob of the project, with its default, bounds and meaning.

Unknown keys are errors (a typo must not be silently ignored); `loading.py` turns a validation problem into
one line naming the key path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from alignuser_sim.config.base import Seed, Strict
from alignuser_sim.config.learning import LearningConfig
from alignuser_sim.config.measuring import EvalConfig, JudgeConfig, TrainConfig
from alignuser_sim.config.params import (
    params_problem,
    recommender_name_problem,
)
from alignuser_sim.config.serving import LLMConfig, ServeConfig

DatasetName = Literal["ml-100k", "ml-1m-agent4rec", "amazon-books", "steam", "generic"]


class TableColumns(Strict):
    """Where each canonical column comes from in a user's own file (generic loader)."""

    user_id: str | None = None
    item_id: str | None = None
    rating: str | None = None
    ts: str | None = None
    title: str | None = None
    genres: str | None = None
    description: str | None = None


DomainName = Literal["movies", "books", "games", "products", "items"]


class DomainWords(Strict):
    """A domain of your own: the words prompts use for its items and what its users do with them."""

    item: str = Field(min_length=1, description="singular noun, e.g. course")
    items: str = Field(min_length=1, description="plural noun, e.g. courses")
    consume: str = Field(min_length=1, description="the verb, e.g. take")
    consumed: str = Field(min_length=1, description="its past tense, e.g. took")
    consumes: str = Field(min_length=1, description="third person, e.g. takes")
    consuming: str = Field(min_length=1, description="-ing form, e.g. taking")
    user: str = Field(min_length=1, description="what a user is called, e.g. learner")


class DatasetConfig(Strict):
    name: DatasetName
    domain: DomainName | DomainWords | None = Field(
        default=None, description="The words of every prompt (movies: viewers watch; books: readers read; games: "
        "players play; products: shoppers buy; items: users try) or your own mapping; None: the dataset's "
        "(ml-*: movies, amazon-books: books, steam: games, generic: items)")
    path: Path | None = Field(
        default=None,
        description="Folder of the dataset (shared datasets) or None to locate it; relative to the scenario file.",
    )
    # generic loader only: files and their column mapping
    interactions: Path | None = None
    items: Path | None = None
    users: Path | None = None
    columns: TableColumns = Field(default_factory=TableColumns)
    genre_separator: str = "|"
    timestamp_unit: Literal["s", "ms"] = "s"

    @model_validator(mode="after")
    def _generic_needs_files(self) -> DatasetConfig:
        if self.name == "generic" and self.interactions is None:
            raise ValueError("interactions: required when name is 'generic'")
        if self.name != "generic" and (self.interactions or self.items or self.users):
            raise ValueError("interactions/items/users: only for name 'generic'")
        for column in ("title", "genres", "description"):  # read from the items file only
            if getattr(self.columns, column) is not None and self.items is None:
                raise ValueError(f"columns.{column}: maps a column of dataset.items, which is not given")
        return self


class PopulationConfig(Strict):
    size: Annotated[int, Field(gt=0)] | None = Field(default=None, description="None: every user")
    sampling: Literal["random", "first", "most_active"] = "random"
    users: list[str] | None = Field(default=None, description="Explicit user ids; overrides size/sampling")
    seed: Seed | None = Field(default=None, description="Defaults to the scenario seed")

    @property
    def max_agents(self) -> int:
        """An upper bound of the population's size before the data is read (shards are sized from it)."""
        if self.users is not None:
            return len(self.users)
        return self.size if self.size is not None else 10**9


class RecommenderConfig(Strict):
    """The recommender the agents are served by: a built-in, a plug-in class (import path or entry-point
    name; `params` go to its constructor) or `http`, a service speaking docs/recommender-protocol.md."""

    algorithm: str = Field(default="pop", description="random | pop | itemknn | mf | lightgcn | http | "
                           "package.module:Class | an entry-point name (group alignuser_sim.recommenders)")
    params: dict[str, Any] = Field(default_factory=dict)
    # http only
    url: str | None = Field(default=None, description="http: the service's base URL")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(default=10.0, description="http: per request")
    batch_size: Annotated[int, Field(gt=0, le=100_000)] = Field(
        default=256, description="http: users per /recommend request, events per /feedback request")
    max_retries: Annotated[int, Field(ge=0, le=20)] = Field(
        default=4, description="http: retries of a request that failed transiently (connection, timeout, 5xx, 429)")
    backoff_base_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=0.2, description="http: first retry's backoff; doubles per retry (equal jitter)")
    backoff_max_s: Annotated[float, Field(ge=0, le=3600)] = Field(default=5.0, description="http: backoff cap")
    fit: bool = Field(default=True, description="http: send the training interactions to POST /fit (false: the "
                      "service keeps the model it has)")

    @field_validator("algorithm")
    @classmethod
    def _algorithm_form(cls, value: str) -> str:
        problem = recommender_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("params")
    @classmethod
    def _params_json_like(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = params_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _url_for_http(self) -> RecommenderConfig:
        if self.algorithm == "http":
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError("url: algorithm http needs the service's http(s) URL")
            if self.params:
                raise ValueError("params: not for algorithm http (the service has its own)")
        elif self.url is not None:
            raise ValueError("url: only for algorithm http")
        return self


class PagesConfig(Strict):
    count: Annotated[int, Field(gt=0)] = 5
    items_per_page: Annotated[int, Field(ge=2, le=50)] = 4
    distractor_ratio: Annotated[int, Field(ge=1, le=9)] = Field(
        default=1, description="Distractors per positive: 1 means 1:1, 3 means 1:3. Also accepts '1:3'."
    )
    session_gap_hours: Annotated[float, Field(gt=0)] = 1.0
    show_item_stats: bool = Field(
        default=True, description="Show each item's average rating and number of ratings (training split) on "
        "every page an agent sees, as platforms do; false for the ablation")
    popularity_words: bool = Field(
        default=False, description="Also a band word for each item's popularity in the catalogue ('very "
        "popular', 'popular', 'little known', 'obscure'), first on its line: the same fact as the number of "
        "ratings, in a form a small model can use. Needs show_item_stats")

    @model_validator(mode="after")
    def _words_need_stats(self) -> PagesConfig:
        if self.popularity_words and not self.show_item_stats:
            raise ValueError("popularity_words: needs show_item_stats (the words rank the ratings counts)")
        return self

    @field_validator("distractor_ratio", mode="before")
    @classmethod
    def _ratio_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*1\s*:\s*(\d+)\s*", value)
            if not match:
                raise ValueError("must be an integer or a ratio like '1:3'")
            return int(match.group(1))
        return value

    @property
    def positives_per_page(self) -> int:
        """How many of a page's slots hold the human's next items (at least one)."""
        return max(1, round(self.items_per_page / (1 + self.distractor_ratio)))


class PolicyConfig(Strict):
    """What a simulated user's prompt holds besides its persona: the ablation switches.

    `prompt-only` is the Agent4Rec-style baseline (persona prompt only); `alignuser` adds the persona's
    retrieved lessons and world-model context. `lessons` / `world_model` override the kind's default.
    `popularity` is a reference user with no LLM at all (`agent/reference_policy.py`): the page's most popular
    items at the user's training watch rate, rated at their training mean, leaving after the user's training
    session length; what `compare` and the believability checks read the LLM policies against.
    """

    kind: Literal["prompt-only", "alignuser", "alignuser+", "popularity"] = "prompt-only"
    lessons: bool | None = None
    world_model: bool | None = None
    lessons_k: Annotated[int, Field(ge=0, le=20)] = 3
    world_model_k: Annotated[int, Field(ge=0, le=10)] = 2
    history_size: Annotated[int, Field(ge=0, le=100)] = Field(
        default=5, description="Recently watched items shown in a prompt (simulation, learning, export)")
    reasoning: Literal["none", "brief", "full"] = Field(
        default="full", description="Decision format: none (watched + ratings + exit), brief (+ one short "
        "thought), full (+ a thought and a feeling per item); see agent/decision.py")

    choice: Literal["list", "score"] = Field(
        default="list", description="How the page's items are chosen: list (the decision format's reply names "
        "them) or score (one yes/no call per item read as P(yes) from the first token's log-probabilities; the "
        "user watches the top ones at its human's training watch rate); see agent/item_scoring.py")
    adapter: bool | None = Field(
        default=None, description="Ask the trained LoRA adapter (`alignuser-sim train`) instead of the base model; "
        "None: on for kind alignuser+")
    rate_watched: bool = Field(
        default=False, description="In a simulation, rate the items a page decision watched without a rating, with "
        "one more call (the evaluation's rating call); for an adapter trained on a split that rates few watches")

    @model_validator(mode="after")
    def _reference_has_no_switches(self) -> PolicyConfig:
        if self.kind == "popularity" and (any((self.lessons, self.world_model, self.adapter, self.rate_watched))
                                         or self.choice != "list"):
            raise ValueError("popularity makes no LLM call: lessons, world_model, adapter, rate_watched, choice do "
                             "not apply")
        return self

    @property
    def uses_llm(self) -> bool:
        """False for the reference policy: its runs start no LLM server and make no call."""
        return self.kind != "popularity"

    @property
    def use_lessons(self) -> bool:
        return self.kind in ("alignuser", "alignuser+") if self.lessons is None else self.lessons

    @property
    def use_world_model(self) -> bool:
        return self.kind in ("alignuser", "alignuser+") if self.world_model is None else self.world_model

    @property
    def use_adapter(self) -> bool:
        return self.kind == "alignuser+" if self.adapter is None else self.adapter

    @property
    def label(self) -> str:
        """prompt-only, +lessons, +world model, alignuser (both); with the adapter: adapter, adapter+lessons,
        adapter+world model, alignuser+ (all three); "/score" after it for `choice: score`; popularity. For
        tables (an eval folder holds a policy's list and score rows side by side)."""
        if not self.uses_llm:
            return self.kind
        both = (self.use_lessons, self.use_world_model)
        if self.use_adapter:
            name = {(False, False): "adapter", (True, False): "adapter+lessons",
                    (False, True): "adapter+world model", (True, True): "alignuser+"}[both]
        else:
            name = {(False, False): "prompt-only", (True, False): "+lessons", (False, True): "+world model",
                    (True, True): "alignuser"}[both]
        return name + ("/score" if self.choice == "score" else "")


class RunConfig(Strict):
    """How the page loop moves agents and writes events (`alignuser-sim run`); results do not depend on it."""

    max_batch: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=4096, description="Agents per recommender / decide call of the driver")
    batch_window_s: Annotated[float, Field(ge=0, le=10)] = Field(
        default=0.002, description="How long agents coming back are gathered into one batch")
    max_chunk: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=512, description="Decisions a shard streams back at most per message")
    event_flush_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=0.5, description="Events are written as one Parquet part at least this often")
    event_flush_events: Annotated[int, Field(gt=0, le=10_000_000)] = Field(
        default=20_000, description="... or when this many are buffered")
    shard_restart_wait_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=0.5, description="Poll interval while waiting for a crashed shard actor to restart")
    max_shard_restarts: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=3, description="Restarts of one shard actor before the run stops (a batch that keeps crashing it)")
    outage_wait_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=300.0, description="How long pages whose LLM call failed in transport are retried while no call "
        "succeeds; after that their sessions are left unfinished, for `--resume`")
    outage_backoff_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=2.0, description="First wait before a page whose LLM call failed in transport is asked again "
        "(doubles per try, at most 30 s)")
    max_failure_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05, description="Share of failed pages (counted failures + unfinished sessions) above which the "
        "run ends `degraded`")


class Scenario(Strict):
    name: str = Field(default="", max_length=200, description="Defaults to the file name")
    description: str = ""
    seed: Seed = 0
    dataset: DatasetConfig
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    recommender: RecommenderConfig = Field(default_factory=RecommenderConfig)
    pages: PagesConfig = Field(default_factory=PagesConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    output_dir: Path = Path("runs")

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, value: str) -> str:
        """Runs are written to OUTPUT_DIR/NAME: a name with a '/' or '..' would write elsewhere."""
        if value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError(f"{value!r} must be one folder name (no '/', '\\', '..' or NUL): runs are "
                             "written to OUTPUT_DIR/NAME")
        return value

    @field_validator("output_dir")
    @classmethod
    def _output_dir_not_a_file(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a folder")
        return value

    @model_validator(mode="after")
    def _replicas_or_endpoints(self) -> Scenario:
        if self.serve.replicas > 0 and self.llm.endpoints:
            raise ValueError("serve.replicas: must be 0 when llm.endpoints names servers (one or the other)")
        return self

    def learning_dir(self) -> Path:
        return self.learning.folder if self.learning.folder is not None else self.run_dir() / "learning"

    def learning_llm(self) -> LLMConfig:
        """The LLM settings `learn` runs with: `llm` with at most `learning.concurrency` requests in flight."""
        cap = self.learning.concurrency
        if cap is None or cap >= self.llm.concurrency:
            return self.llm
        return self.llm.model_copy(update={"concurrency": cap})

    @property
    def population_seed(self) -> int:
        return self.seed if self.population.seed is None else self.population.seed

    def run_dir(self) -> Path:
        return self.output_dir / self.name
