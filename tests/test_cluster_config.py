"""cluster.yaml against Ray's own cluster-launcher schema and checks, its security settings, and the
studies against the fleet it describes (no cloud call)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
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
POLICY = ROOT / "cluster" / "head-policy.json"
DOCS = ROOT / "docs" / "cluster.md"
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


def test_ssh_only_through_the_named_security_group(cluster: dict) -> None:
    """Ray creates a group with SSH open to 0.0.0.0/0 for any node type without SecurityGroupIds
    (and adds provider.security_group's rules to it, never narrowing it)."""
    for name, kind in cluster["available_node_types"].items():
        (group,) = kind["node_config"]["SecurityGroupIds"]
        assert re.fullmatch(r"sg-[0-9a-f]{8,17}", group), name
    assert "security_group" not in cluster["provider"]
    assert "0.0.0.0" not in yaml.safe_dump(cluster)  # the settings, not the comments
    docs = DOCS.read_text()
    assert "--port 22 --cidr \"$CIDR\"" in docs and "--protocol -1 --source-group \"$SG\"" in docs


def test_the_head_gets_a_least_privilege_profile_and_workers_none(cluster: dict) -> None:
    """With no IamInstanceProfile on the head, Ray makes one with EC2 and S3 full access."""
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["node_config"]["IamInstanceProfile"] == {"Name": "kon-ray-head"}
    assert all("IamInstanceProfile" not in t["node_config"] for n, t in types.items() if n != cluster["head_node_type"])
    statements = json.loads(POLICY.read_text())["Statement"]
    actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert all(a.split(":")[0] in ("ec2", "ssm") and "*" not in a for a in actions), actions
    assert not any(a.split(":")[1].startswith(("Delete", "Modify", "Authorize")) for a in actions)
    for s in statements:  # what changes instances is held to this cluster's tag
        changes = {"ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"} & set(s["Action"])
        if changes:
            assert s["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": cluster["cluster_name"]}}
        if "ec2:RunInstances" in s["Action"] and any(":instance/" in r for r in s["Resource"]):
            assert s["Condition"] == {"StringEquals": {"aws:RequestTag/ray-cluster-name": cluster["cluster_name"]}}


def test_the_hub_token_stays_out_of_jobs_and_logs(cluster: dict) -> None:
    """The head's setup reads the token from a file (deleted once the model is on the shared
    storage); no command line, job environment or study holds it."""
    text = CLUSTER.read_text()
    assert "HF_TOKEN" not in text.replace("HF_TOKEN_PATH", "")
    (download,) = [c for c in cluster["head_setup_commands"] if "hf download" in c]
    assert "HF_TOKEN_PATH=~/.hf-token" in download and download.endswith("rm -f ~/.hf-token)")
    assert "--local-dir /mnt/kon-ray/models/" in download
    assert "runtime-env" not in DOCS.read_text() and "HF_TOKEN" not in DOCS.read_text()
    assert "model.backbone=/mnt/kon-ray/models/" in DOCS.read_text()


def test_only_the_projects_own_files_are_synced(cluster: dict) -> None:
    """Each file mount is a file or folder that git tracks in the repository, never the whole checkout."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for remote, local in cluster["file_mounts"].items():
        path = (ROOT / local).resolve()
        assert path != ROOT and path.is_relative_to(ROOT), local
        relative = path.relative_to(ROOT).as_posix()
        assert relative in tracked or any(t.startswith(relative + "/") for t in tracked), local
        assert remote == f"/home/ubuntu/kon-ray/{relative}"
    assert cluster["rsync_filter"] == [".gitignore"]


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
