"""cluster.yaml against Ray's own cluster-launcher schema and checks, and the studies against the
fleet it describes (no cloud call)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from kon_ray.config import ConfigError
from kon_ray.distributed import cluster_nodes, fleet_nodes, total_resources
from kon_ray.studies import check_study, load_study
from kon_ray.studies.tune import SLOT, plan_resources

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid_for_ray_up(cluster: dict) -> None:
    jsonschema.validate(cluster, SCHEMA)
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_safe_defaults(cluster: dict) -> None:
    text = CLUSTER.read_text().lower()
    assert "aws_secret" not in text and "aws_access_key" not in text
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    assert cluster["available_node_types"]["head"]["resources"]["CPU"] == 0  # no training on the head
    gpu = cluster["available_node_types"]["gpu_a100"]
    assert gpu["resources"]["GPU"] == 8 and gpu["max_workers"] <= cluster["max_workers"]


def extras(name: str, groups: dict[str, list[str]]) -> list[str]:
    """The requirements of extra ``name`` of kon-ray, its kon-ray[...] references expanded."""
    out = []
    for requirement in groups[name]:
        if requirement.startswith("kon-ray["):
            for inner in requirement[len("kon-ray[") : -1].split(","):
                out += extras(inner, groups)
        else:
            out.append(requirement)
    return out


def test_nodes_install_what_ray_up_and_job_submission_need(cluster: dict) -> None:
    """The head runs the autoscaler and the job server, which come with ray[default] only."""
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    commands = " ".join(cluster["setup_commands"])
    (extra,) = re.findall(r"kon-ray\[(\w+)\]", commands)
    assert any(r.startswith("ray[") and "default" in r.split("]")[0] for r in extras(extra, groups))
    assert {"deepspeed", "optuna", "plotly"} <= {re.split(r"[<>=\[]", r)[0] for r in extras(extra, groups)}


def test_a_broken_cluster_yaml_is_caught(cluster: dict) -> None:
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_a100"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_the_fleet_holds_the_paper_study(cluster: dict) -> None:
    """The nodes `ray up` may start: the head (trial slots, no CPU) and 4 x 8 A100s; the paper's
    8 x 1 GPU trial fits one node, and a study never asks for more GPUs than a node type has."""
    nodes = fleet_nodes(cluster)
    assert nodes == fleet_nodes(prepare_config(copy.deepcopy(cluster))) == cluster_nodes(CLUSTER)
    assert nodes == [{"CPU": 0.0, SLOT: 8.0}] + [{"CPU": 96.0, "GPU": 8.0}] * 4
    paper = load_study(ROOT / "studies" / "paper.py")
    configs = check_study(paper, "paper.py")
    assert plan_resources(paper, configs, total_resources(nodes), nodes) == (1, None, {SLOT: 1.0})
    seeds = dataclasses.replace(paper, seeds=(0, 1, 2), max_concurrent_trials=4)
    assert plan_resources(seeds, check_study(seeds, "paper.py"), total_resources(nodes), nodes)[0] == 3
    sixteen = dataclasses.replace(paper, base={**paper.base, "train.workers": 1, "train.gpus_per_worker": 16})
    with pytest.raises(ConfigError, match=r"train\.gpus_per_worker=16: no node has that many GPUs \(largest: 8\)"):
        plan_resources(sixteen, check_study(sixteen, "paper.py"), total_resources(nodes), nodes)
