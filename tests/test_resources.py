"""How a sweep splits a machine or a cluster among its trials (``tinylm.tune.resources.plan_resources``): pure arithmetic,
no Ray started."""

import pytest

from tinylm.config import ConfigError
from tinylm.tune.resources import plan_resources


def test_one_gpu_shared_by_k_trials():
    one = plan_resources(cpus=16, gpus=1)
    four = plan_resources(cpus=16, gpus=1, trials_per_gpu=4)
    assert (one["concurrent"], one["gpu_per_worker"], one["cpus_per_worker"]) == (1, 1.0, 8)
    assert (four["concurrent"], four["gpu_per_worker"], four["cpus_per_worker"]) == (4, 0.25, 4)
    # 1-worker trials train in the Tune trial's process, which asks for the fractional GPU itself
    assert four["local"] and four["trial_resources"] == {"cpu": 4, "gpu": 0.25}


def test_gpu_cluster_and_multi_worker_trials():
    p = plan_resources(cpus=64, gpus=8, trials_per_gpu=2)
    assert (p["concurrent"], p["cpus_per_worker"]) == (16, 4)
    multi = plan_resources(cpus=64, gpus=8, workers=2, trials_per_gpu=2, driver_slots=8)
    # 2 workers x 1/2 GPU each: 8 trials fit the GPUs, every driver holds a tune_driver slot (8 on the head)
    assert (multi["concurrent"], multi["gpu_per_worker"], multi["cpus_per_worker"]) == (8, 0.5, 4)
    assert not multi["local"] and multi["trial_resources"] == {"cpu": 0, "tune_driver": 1}
    assert plan_resources(cpus=64, gpus=8, workers=2, driver_slots=3)["concurrent"] == 3
    # the total asked for never exceeds the cluster
    for k in (1, 2, 3, 4, 7):
        q = plan_resources(cpus=64, gpus=8, trials_per_gpu=k)
        assert q["concurrent"] * q["gpu_per_worker"] <= 8 + 1e-9 and q["concurrent"] * q["cpus_per_worker"] <= 64


def test_cpu_threads_and_concurrency_split():
    auto = plan_resources(cpus=2, gpus=0)
    assert (auto["concurrent"], auto["cpus_per_worker"], auto["use_gpu"]) == (2, 1, False)
    assert auto["trial_resources"] == {"cpu": 1}
    one = plan_resources(cpus=16, gpus=0, trials_per_gpu=1)
    four = plan_resources(cpus=16, gpus=0, trials_per_gpu=4)
    assert (one["concurrent"], one["cpus_per_worker"]) == (1, 16)
    assert (four["concurrent"], four["cpus_per_worker"]) == (4, 4)
    assert plan_resources(cpus=2, gpus=0, max_concurrent=1)["cpus_per_worker"] == 2
    assert not plan_resources(cpus=8, gpus=0, workers=2)["local"]
    assert not plan_resources(cpus=8, gpus=0, local_mode=False)["local"]


@pytest.mark.parametrize("kwargs", [dict(trials_per_gpu=-1), dict(max_concurrent=-2), dict(workers=-1),
                                    dict(workers=2, local_mode=True)])
def test_bad_resource_flags_are_refused(kwargs):
    with pytest.raises(ConfigError):
        plan_resources(cpus=8, gpus=1, **kwargs)


def test_grid_order_puts_the_baseline_first_and_is_a_fixed_permutation():
    from tinylm.layout import VARIANT
    from tinylm.tune import grid_order

    lrs = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    order = grid_order("lr", lrs, {"lr": 3e-3, "glu_factor": 4.0})
    assert order[0] == 3e-3 and sorted(order) == sorted(lrs)
    assert order != lrs  # not the written (worst-first) order
    assert grid_order("lr", lrs, {"lr": 3e-3}) == order  # deterministic: a resumed sweep walks the same order
    no_base = grid_order("lr", lrs, {})
    assert sorted(no_base) == sorted(lrs)
    variants = [{"n_layer": 2}, {"n_layer": 4}, {"n_layer": 6}]
    assert grid_order(VARIANT, variants, {"n_layer": 6})[0] == {"n_layer": 6}


def test_grid_space_shuffles_only_when_trials_can_stop_early():
    from tinylm.config import Config
    from tinylm.sweep import Space
    from tinylm.tune import grid_space

    base = Config.from_name("debug")
    space = Space(lr=[1e-3, 3e-3, 1e-2, 3e-2])
    plain = grid_space(base, space, seeds=1)
    assert plain["lr"]["grid_search"] == space.axes["lr"]
    early = grid_space(base, space, seeds=1, baseline={"lr": 1e-2}, shuffle=True)
    assert early["lr"]["grid_search"][0] == 1e-2 and sorted(early["lr"]["grid_search"]) == space.axes["lr"]
