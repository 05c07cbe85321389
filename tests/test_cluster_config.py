"""cluster.yaml / cluster-local.yaml pass Ray's own cluster-launcher validation, offline.

`prepare_config` is what `ray up` runs first (merge with the provider's defaults; for the local
provider, build its single node type); `validate_config` checks the result against Ray's JSON
schema. Neither talks to a cloud. Broken variants must fail the same checks.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema  # ray[default] (the `cluster` extra) brings it; Ray's validator needs it
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_checks(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_is_valid_for_ray():
    prepared = ray_checks(load("cluster.yaml"))
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}  # no trials on the head
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["resources"]["CPU"] >= 4 for t in gpu_types)
    assert sum(t.get("max_workers", 0) for t in gpu_types) >= 1


def test_aws_config_installs_and_ships_the_project():
    config = load("cluster.yaml")
    assert config["file_mounts"]["~/mtlsweep"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    setup = "\n".join(config["setup_commands"])
    # torch from PyTorch's CUDA index strictly before the project, which would otherwise pull it
    assert setup.index("download.pytorch.org") < setup.index("mtlsweep[cluster]")
    assert "ray[default" in setup
    for excluded in (".venv", "runs", ".git"):
        assert excluded in config["rsync_exclude"]
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert "--dashboard-host=127.0.0.1" in starts


def test_local_config_is_valid_for_ray():
    config = load("cluster-local.yaml")
    assert "available_node_types" not in config
    prepared = ray_checks(config)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(
        config["provider"]["worker_ips"])
    assert "~/mtlsweep" in prepared["file_mounts"]


def test_local_provider_rejects_node_types():
    config = load("cluster-local.yaml")
    config["available_node_types"] = load("cluster.yaml")["available_node_types"]
    with pytest.raises(Exception, match="available_node_types is not supported"):
        prepare_config(config)


def test_fractional_node_resources_fail_ray_schema():
    config = load("cluster.yaml")
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.25
    with pytest.raises(jsonschema.ValidationError, match="0.25 is not of type 'integer'"):
        ray_checks(config)


def test_unknown_and_missing_fields_fail():
    config = load("cluster.yaml")
    config["gpu_workers"] = 4  # a typo of a real field
    with pytest.raises(jsonschema.ValidationError, match="gpu_workers"):
        ray_checks(config)
    config = load("cluster.yaml")
    config["head_node_type"] = "head_typo"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_checks(config)
    config = load("cluster-local.yaml")
    del config["provider"]["worker_ips"]
    with pytest.raises(Exception, match="worker_ips"):
        prepare_config(config)
