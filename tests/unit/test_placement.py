"""cluster.deploy.placement: the config's node resources become Ray actor options, a deployment no
node could host is refused at deploy time, and a multi-node app refuses a node-local Redis."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, parse_config
from cluster.deploy.placement import (
    Node,
    actor_options,
    check_cluster,
    redis_problem,
    replica_needs,
    unplaceable,
)

HEAD = Node("head0000aaaa", "10.0.0.1", {"CPU": 2.0, "frontend": 10.0, "memory": 8e9})
WORKER = Node("work0000bbbb", "10.0.0.2", {"CPU": 4.0, "GPU": 1.0, "expert-node": 10.0,
                                           "accelerator_type:L4": 1.0, "memory": 2.4e10})


def placed_config(**serving) -> object:
    return parse_config({
        "redis": {"url": "redis://redis:6379/0"},
        "routing": {"resources": {"frontend": 1}},
        "pools": [{"name": "gpu", "num_cpus": 1, "num_gpus": 1, "memory_gb": 2,
                   "accelerator_type": "L4", "resources": {"expert-node": 1}}],
        "serving": {"resources": {"frontend": 1}, **serving},
    })


def test_config_resources_become_ray_actor_options():
    options = actor_options(placed_config())
    assert options["pool-gpu"] == {"num_cpus": 1.0, "num_gpus": 1.0, "memory": 2 * 2**30,
                                   "resources": {"expert-node": 1.0},
                                   "accelerator_type": "L4"}
    assert options["router"] == options["gateway"] == {"num_cpus": 0,
                                                       "resources": {"frontend": 1.0}}
    assert replica_needs(options["pool-gpu"]) == {
        "CPU": 1.0, "GPU": 1.0, "memory": float(2 * 2**30), "expert-node": 1.0,
        "accelerator_type:L4": 0.001}
    assert actor_options(parse_config({}))["pool-default"] == {"num_cpus": 0.0, "num_gpus": 0.0}


def test_each_deployment_fits_the_node_with_its_resources():
    needs = {name: replica_needs(o) for name, o in actor_options(placed_config()).items()}
    assert unplaceable(needs, {"head": HEAD.resources, "worker": WORKER.resources}) == []
    assert unplaceable(needs, {"worker": WORKER.resources}) == [
        "deployment 'router' needs {frontend: 1} per replica, and no node has that (nodes: "
        "worker: {CPU: 4, GPU: 1, accelerator_type:L4: 1, expert-node: 10, memory: 22.4 GiB})",
        "deployment 'gateway' needs {frontend: 1} per replica, and no node has that (nodes: "
        "worker: {CPU: 4, GPU: 1, accelerator_type:L4: 1, expert-node: 10, memory: 22.4 GiB})",
    ]


def test_a_pool_no_node_can_host_is_refused_at_deploy_time():
    with pytest.raises(ConfigError, match="deployment 'pool-gpu' needs .*expert-node: 1"):
        check_cluster(placed_config(), "redis://redis:6379/0", [HEAD])
    check_cluster(placed_config(), "redis://redis:6379/0", [HEAD, WORKER])
    # nodes that join later: the deployment waits for them instead
    check_cluster(placed_config(autoscaling_nodes=True), "redis://redis:6379/0", [HEAD])


@pytest.mark.parametrize("url", ["embedded", "unix:///tmp/redis.sock"])
def test_a_node_local_redis_is_refused_on_a_multi_node_cluster(url):
    problem = redis_problem(url, [HEAD, WORKER], autoscaling_nodes=False)
    assert "multi-node cluster (nodes 2 alive)" in problem
    assert "redis:// or rediss:// URL" in problem
    assert redis_problem(url, [HEAD], autoscaling_nodes=False) is None
    assert "nodes joining later" in redis_problem(url, [HEAD], autoscaling_nodes=True)
    with pytest.raises(ConfigError, match="unix socket"):
        check_cluster(placed_config(), url, [HEAD, WORKER])


def test_a_loopback_redis_is_refused_only_across_hosts():
    same_host = [HEAD, Node("w2", HEAD.address, WORKER.resources)]
    url = "redis://127.0.0.1:6379/0"
    assert redis_problem(url, same_host, autoscaling_nodes=False) is None
    assert "loopback" in redis_problem(url, [HEAD, WORKER], autoscaling_nodes=False)
    assert redis_problem("redis://redis:6379/0", [HEAD, WORKER], False) is None


@pytest.mark.parametrize(("pool", "message"), [
    ({"resources": {"CPU": 2}}, "resource 'CPU' is set by num_cpus"),
    ({"resources": {"expert-node": 0}}, "greater than 0"),
    ({"accelerator_type": "A100"}, "accelerator_type needs num_gpus > 0"),
])
def test_bad_placement_fields_name_the_problem(pool, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"pools": [{"name": "p", **pool}]})
