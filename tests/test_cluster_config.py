"""cluster.yaml against Ray's own cluster-launcher schema and checks (no cloud call)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"
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
    assert cluster["available_node_types"]["head"]["resources"] == {"CPU": 0}  # no training on the head
    gpu = cluster["available_node_types"]["gpu_a100"]
    assert gpu["resources"]["GPU"] == 8 and gpu["max_workers"] <= cluster["max_workers"]


def test_a_broken_cluster_yaml_is_caught(cluster: dict) -> None:
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_a100"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))
