"""The scenario: one YAML file that fully determines a run (with its seed).

Every knob lives in the model tree of `models.py` (the `eval:`, `train:` and `judge:` sections in
`measuring.py`, `llm:` and `serve:` in `serving.py`, bounds on free-form values in `params.py`); `loading.py`
reads, validates and resolves a file.
Import from here: `from alignuser_sim.config import Scenario, load_scenario`.
"""

from alignuser_sim.config.base import Strict
from alignuser_sim.config.loading import absolute_paths, dump_scenario, load_scenario, scenario_from_dict
from alignuser_sim.config.measuring import EvalConfig, JudgeConfig, TrainConfig
from alignuser_sim.config.models import (
    DatasetConfig,
    DatasetName,
    DomainWords,
    LearningConfig,
    PagesConfig,
    PolicyConfig,
    PopulationConfig,
    RecommenderConfig,
    RunConfig,
    Scenario,
    TableColumns,
)
from alignuser_sim.config.params import BUILTIN_RECOMMENDERS, RecommenderName, recommender_name_problem
from alignuser_sim.config.serving import LLMConfig, SamplingConfig, ServeConfig

__all__ = [
    "BUILTIN_RECOMMENDERS",
    "DatasetConfig",
    "DatasetName",
    "DomainWords",
    "EvalConfig",
    "JudgeConfig",
    "LLMConfig",
    "LearningConfig",
    "PagesConfig",
    "PolicyConfig",
    "PopulationConfig",
    "RecommenderConfig",
    "RecommenderName",
    "RunConfig",
    "SamplingConfig",
    "Scenario",
    "ServeConfig",
    "Strict",
    "TableColumns",
    "TrainConfig",
    "absolute_paths",
    "dump_scenario",
    "load_scenario",
    "recommender_name_problem",
    "scenario_from_dict",
]
