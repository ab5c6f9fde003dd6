"""docker/: the compose deployment, its shared dagster.yaml and the Helm values agree with each other and the code.

Docker cannot run the deployment here (dockerd starts, but no image can be pulled: the registry is not
reachable from this sandbox; see BENCHMARKS.md); `docker-compose config` (Debian's docker-compose) validates the file's schema and
interpolation, and these tests check what it cannot: every Dagster process shares one dagster.yaml and gets every
variable it reads, services only depend on services that exist, the UI listens on this machine only, and the
profile settings in the environment are valid settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG

from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV, GPU_STEP_K8S_CONFIG
from synthaug_pipeline.lib.config import load_profile

DOCKER = Path(__file__).resolve().parent.parent / "docker"
DAGSTER_SERVICES = {"code", "webserver", "daemon", "worker"}
REQUIRED = {"DAGSTER_PG_PASSWORD": "pw", "REDIS_PASSWORD": "rp", "AWS_SECRET_ACCESS_KEY": "sk"}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} (and $$ for a literal $)."""

    def value(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    text = re.sub(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}", value, text.replace("$$", "\0"))
    return text.replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate((DOCKER / "compose.yaml").read_text(), REQUIRED))


def _env_vars(node) -> set[str]:
    """Every ``{env: NAME}`` in a Dagster config tree."""
    if isinstance(node, dict):
        found = {node["env"]} if set(node) == {"env"} else set()
        return found.union(*(_env_vars(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_vars(v) for v in node))
    return set()


def test_every_dagster_process_shares_one_dagster_yaml_and_gets_its_variables(compose):
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    needed = _env_vars(instance)
    assert needed == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "seaweedfs", "bucket", *DAGSTER_SERVICES}
    for name in DAGSTER_SERVICES:
        service = services[name]
        assert service["image"] == services["bucket"]["image"]  # this image, built once (by `bucket`)
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in service["volumes"], name
        env = service["environment"]
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"
        assert needed <= set(env), f"{name} lacks {needed - set(env)}"
        assert env["DAGSTER_PG_HOST"] == "postgres" and env["DAGSTER_PG_PASSWORD"] == REQUIRED["DAGSTER_PG_PASSWORD"]
        assert env[CELERY_BROKER_ENV].endswith("@redis:6379/0")
        profile = load_profile(env["SYNTHAUG_PROFILE"], env["SYNTHAUG_SET"].split(";"))  # valid settings, as the code reads them
        assert profile.execution.executor == "celery" and profile.output.url.startswith("s3://")
        assert profile.output.endpoint_url == "http://seaweedfs:8333"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == REQUIRED["DAGSTER_PG_PASSWORD"]


def test_services_depend_on_defined_services_and_volumes_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    code = services[location["grpc_server"]["host"]]
    assert str(location["grpc_server"]["port"]) in code["command"] and "synthaug_pipeline.definitions" in code["command"]
    assert services["worker"]["command"][:2] == ["synthaug", "worker"]
    assert all(port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", []))  # nothing exposed
    assert (DOCKER.parent / services["bucket"]["build"]["dockerfile"]).is_file()
    assert "scaleout" in (DOCKER / "Dockerfile").read_text()


def test_missing_password_is_refused_by_interpolation():
    with pytest.raises(KeyError, match="DAGSTER_PG_PASSWORD"):
        _interpolate((DOCKER / "compose.yaml").read_text(), {k: v for k, v in REQUIRED.items() if k != "DAGSTER_PG_PASSWORD"})


def test_docker_compose_validates_the_file(tmp_path):
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose not found although CI installs it (apt-get install docker-compose)")
        pytest.skip("docker-compose not found: apt-get install docker-compose to validate docker/compose.yaml")
    env = {**os.environ, **REQUIRED}
    done = subprocess.run([tool, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_dagster_yaml_is_a_valid_instance_config():
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(DOCKER))  # validates against Dagster's schema (raises on any error)
    assert "postgres" in config["storage"]
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    # batch runs carry the range tags, not dagster/partition (executors.partition_tags)
    assert {"key": ASSET_PARTITION_RANGE_START_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_helm_values_match_the_deployment():
    values = yaml.safe_load((DOCKER / "helm-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "synthaug_pipeline.definitions"]
    settings = {e["name"]: e["value"] for e in deployment["env"]}
    profile = load_profile(settings["SYNTHAUG_PROFILE"], settings["SYNTHAUG_SET"].split(";"))
    assert profile.execution.executor == "k8s" and profile.execution.step_retries == 2
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    # batch runs carry the range tags, not dagster/partition (executors.partition_tags)
    assert {"key": ASSET_PARTITION_RANGE_START_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert GPU_STEP_K8S_CONFIG["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu.present" in GPU_STEP_K8S_CONFIG["pod_spec_config"]["node_selector"]
