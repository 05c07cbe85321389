"""Trial device setup and resource checks; the CUDA path is exercised with torch.cuda mocked."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from orchestrator import devices
from orchestrator.devices import check_resources, setup_trial_device


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeCuda:
    """Records what setup_trial_device asks of torch.cuda on a machine with `count` GPUs."""

    def __init__(self, count: int = 1):
        self.count = count
        self.calls: list[tuple] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeCuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_device",
                            lambda d: self.calls.append(("set_device", d)))
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                            lambda f, d: self.calls.append(("fraction", f, d)))
        return self


def fake_ray(monkeypatch: pytest.MonkeyPatch, initialized: bool, gpu_ids: list) -> None:
    module = types.SimpleNamespace(is_initialized=lambda: initialized,
                                   get_gpu_ids=lambda: list(gpu_ids))
    monkeypatch.setitem(sys.modules, "ray", module)


@pytest.mark.parametrize("cpus, threads", [(0.25, 1), (0.5, 1), (1, 1), (1.5, 2), (2, 2), (3, 3)])
def test_cpu_share_sets_torch_threads(cpus, threads):
    assert setup_trial_device(cpus, 0) == torch.device("cpu")
    assert torch.get_num_threads() == threads


def test_gpu_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match=r"gpus: 0.25 requested but CUDA is not available"):
        setup_trial_device(1, 0.25)
    assert torch.get_num_threads() == before  # nothing done before the error


@pytest.mark.parametrize("cpus, gpus, field", [
    (0, 0, "cpus"), (-1, 0, "cpus"), (float("nan"), 0, "cpus"), ("1", 0, "cpus"),
    (1, -0.5, "gpus"), (1, float("inf"), "gpus"), (1, 0.00001, "gpus"), (True, 0, "cpus"),
])
def test_bad_shares_name_the_field(cpus, gpus, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        setup_trial_device(cpus, gpus)


def test_fractional_gpu_without_ray_uses_visible_cuda0_and_caps_memory(monkeypatch):
    cuda = FakeCuda(count=2).install(monkeypatch)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    device = setup_trial_device(0.5, 0.25)
    assert device == torch.device("cuda", 0)
    assert cuda.calls == [("set_device", device), ("fraction", 0.25, device)]
    assert torch.get_num_threads() == 1


def test_ray_not_initialised_is_not_asked(monkeypatch):
    cuda = FakeCuda(count=2).install(monkeypatch)
    fake_ray(monkeypatch, initialized=False, gpu_ids=[1])  # ids must be ignored
    assert setup_trial_device(1, 0.5) == torch.device("cuda", 0)
    assert ("fraction", 0.5, torch.device("cuda", 0)) in cuda.calls


def test_ray_assigned_gpu_with_ray_set_visibility(monkeypatch):
    # Ray sets CUDA_VISIBLE_DEVICES to the assigned id, so physical GPU 3 is visible index 0.
    cuda = FakeCuda(count=1).install(monkeypatch)
    fake_ray(monkeypatch, initialized=True, gpu_ids=["3"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    device = setup_trial_device(1, 0.25)
    assert device == torch.device("cuda", 0)
    assert cuda.calls[-1] == ("fraction", 0.25, device)


def test_ray_assigned_gpu_looked_up_in_a_wider_visible_list(monkeypatch):
    FakeCuda(count=3).install(monkeypatch)
    fake_ray(monkeypatch, initialized=True, gpu_ids=[5])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert setup_trial_device(1, 1) == torch.device("cuda", 1)


def test_ray_assigned_gpu_without_visibility_list_is_the_index(monkeypatch):
    FakeCuda(count=4).install(monkeypatch)
    fake_ray(monkeypatch, initialized=True, gpu_ids=[2])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert setup_trial_device(1, 1) == torch.device("cuda", 2)


def test_ray_assigned_gpu_not_visible_is_an_error(monkeypatch):
    FakeCuda(count=1).install(monkeypatch)
    fake_ray(monkeypatch, initialized=True, gpu_ids=[7])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ValueError, match="gpus: Ray assigned GPU 7"):
        setup_trial_device(1, 1)


def test_whole_and_multi_gpu_share_caps_fraction_at_one(monkeypatch):
    cuda = FakeCuda(count=2).install(monkeypatch)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    device = setup_trial_device(4, 2)
    assert cuda.calls[-1] == ("fraction", 1.0, device)
    assert torch.get_num_threads() == 4


def test_ray_is_never_imported_for_a_cpu_trial(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    setup_trial_device(1, 0)
    assert "ray" not in sys.modules


CLUSTER = {"CPU": 2.0, "memory": 4e9, "object_store_memory": 1e9, "node:127.0.0.1": 1.0}


def test_fitting_requests_pass():
    check_resources({"cpu": 1}, CLUSTER)
    check_resources({"cpu": 0.5, "gpu": 0}, CLUSTER)
    check_resources({"CPU": 2, "worker_node": 1}, {**CLUSTER, "worker_node": 2.0})
    check_resources({"cpu": 1, "gpu": 0.25}, {**CLUSTER, "GPU": 1.0})
    check_resources({}, CLUSTER)


def test_missing_gpu_names_resource_and_cluster():
    with pytest.raises(ValueError) as err:
        check_resources({"cpu": 1, "gpu": 0.25}, CLUSTER)
    msg = str(err.value)
    assert msg.startswith("gpu: 0.25 requested per trial, cluster has 0 GPUs")
    assert "CPU=2" in msg and "node:" not in msg


def test_too_many_cpus_and_missing_custom_resource():
    with pytest.raises(ValueError, match=r"^cpu: 3 requested per trial, cluster has 2 CPUs"):
        check_resources({"cpu": 3}, CLUSTER)
    with pytest.raises(ValueError,
                       match=r"^worker_node: 1 requested .* has 0 of resource 'worker_node'"):
        check_resources({"worker_node": 1}, CLUSTER)


@pytest.mark.parametrize("request_, field", [
    ({"gpu": 1.5}, "gpu"), ({"cpu": -1}, "cpu"), ({"gpu": "a"}, "gpu"), ({"cpu": None}, "cpu"),
    ([("cpu", 1)], "resources"), ({"": 1}, "resources"),
])
def test_malformed_requests(request_, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        check_resources(request_, {**CLUSTER, "GPU": 4.0})


def test_real_ray_ids_helper_without_ray(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert devices._ray_gpu_ids() == []


def test_gpu_packing_bench_skips_cleanly_without_cuda(monkeypatch, capsys):
    """Without CUDA the bench explains itself and its last line is the JSON verdict."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_packing.py"
    spec = importlib.util.spec_from_file_location("gpu_packing_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "CUDA is not available" in lines[0]
    assert json.loads(lines[-1]) == {"bench": "gpu_packing", "skipped": True,
                                     "reason": "CUDA not available", "goal_ratio": 2.5}
    # the sweep it would run is a valid one, with the fractional share in its resources
    from orchestrator.spec import parse_spec
    spec_ = parse_spec(bench.sweep_yaml(bench.SHARE, smoke=False))
    assert spec_.resource_request() == {"cpu": 1.0, "gpu": 0.25}
    assert spec_.num_grid_trials() == bench.TRIALS
