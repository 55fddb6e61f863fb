"""The scenario: one YAML file that fully determines a run (with its seed).

Every knob lives in the model tree of `models.py`; `loading.py` reads, validates and resolves a file.
Import from here: `from alignuser_sim.config import Scenario, load_scenario`.
"""

from alignuser_sim.config.loading import absolute_paths, dump_scenario, load_scenario, scenario_from_dict
from alignuser_sim.config.models import (
    BUILTIN_RECOMMENDERS,
    DatasetConfig,
    DatasetName,
    DomainWords,
    EvalConfig,
    LearningConfig,
    LLMConfig,
    PagesConfig,
    PolicyConfig,
    PopulationConfig,
    RecommenderConfig,
    RecommenderName,
    RunConfig,
    SamplingConfig,
    Scenario,
    ServeConfig,
    Strict,
    TableColumns,
    TrainConfig,
    recommender_name_problem,
)

__all__ = [
    "BUILTIN_RECOMMENDERS",
    "DatasetConfig",
    "DatasetName",
    "DomainWords",
    "EvalConfig",
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
