"""docker/compose.yaml and docker/Dockerfile checked without a container engine: the compose file
is valid (Debian's docker-compose and the Compose specification's JSON schema it ships), every
image it names is built by a Dockerfile target, the Dockerfile is multi-stage, pinned, non-root
and bakes in no secret, and the node services run exactly what the three-host test runs
(tests/node/test_deploy_netns.py): the command of docker/prepare.py, on the plan's addresses,
with the files prepare.py makes mounted where the node config looks for them - public ones
read-only, secret ones as compose secrets, none through the environment."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_deploy_netns import DOCKER, healthcheck_command, load_prepare

from fusion_prime.bridge.config import load_bridge_config
from fusion_prime.node.config import load_config
from fusion_prime.protocol.identity import PartyIdentity

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has docker-compose's YAML parser


def compose_cli() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is missing: `make setup` installs Debian's docker-compose"
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as data (anchors and merge keys resolved, nothing interpolated)."""
    compose_cli()
    result = subprocess.run([SYSTEM_PYTHON, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), "
                             "sys.stdout)"], input=(DOCKER / "compose.yaml").read_text(), capture_output=True,
                            text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Any]:
    """Stages of docker/Dockerfile: name -> {base, lines}, in order, plus the ARG defaults."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+ )?(\S+) AS (\S+)", rest)
            assert match, line
            current = stages[match.group(2)] = {"base": match.group(1), "lines": []}
        elif current is not None:
            current["lines"].append((word, rest))
    return {"args": args, "stages": stages}


def test_docker_compose_accepts_it(tmp_path):
    result = subprocess.run([compose_cli(), "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_it_validates_against_the_compose_specification_schema(compose):
    import jsonschema

    where = subprocess.run([SYSTEM_PYTHON, "-c", "import compose.config, os; "
                            "print(os.path.dirname(compose.config.__file__))"],
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    schema = json.loads((Path(where) / "compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)  # its "$schema" (2019-09, with a '#') is not looked up
    validator.validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["node1"]["secrets"][0]["mode"] = "read-only please"  # a mode is a number
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_every_image_is_built_by_a_dockerfile_target(compose, dockerfile):
    image_target: dict[str, str] = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        assert build is not None and "image" in service, f"{name} would pull an image this repo does not build"
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve(), name
        assert build["target"] in dockerfile["stages"], f"{name}: no Dockerfile target {build['target']!r}"
        assert image_target.setdefault(service["image"], build["target"]) == build["target"], \
            f"{service['image']} is built from two targets"
        assert not re.search(r":latest$|^[^:]+$", service["image"]), f"{name}: image {service['image']} has no version"
    assert set(image_target.values()) == {"node", "chains"}


def _stage_chain(dockerfile: dict[str, Any], target: str) -> list[dict[str, Any]]:
    chain = []
    while target in dockerfile["stages"]:
        chain.append(dockerfile["stages"][target])
        target = dockerfile["stages"][target]["base"]
    return chain[::-1]


def test_the_dockerfile_is_multi_stage_pinned_non_root_and_without_secrets(dockerfile):
    stages = dockerfile["stages"]
    assert {"builder", "runtime", "node", "chains"} <= set(stages)
    for name, stage in stages.items():
        base = stage["base"]
        if base in stages:
            continue
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: dockerfile["args"][m.group(1)], base)
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w-]+(@sha256:[0-9a-f]{64})?", resolved), \
            f"{name}: base image {resolved!r} is not pinned to a version"
    words = [(w, rest) for stage in stages.values() for w, rest in stage["lines"]]
    assert not [rest for w, rest in words if w == "ADD"], "ADD fetches or unpacks; COPY only"
    copied = " ".join(rest for w, rest in words if w == "COPY")
    assert "operators" not in copied and ".key" not in copied and "storage" not in copied
    assert not [rest for w, rest in words if w == "ENV" and re.search(r"PASS|SECRET|KEY", rest, re.I)]
    # the run-time images: the venv copied from the builder, a non-root user last
    for target in ("node", "chains"):
        chain = _stage_chain(dockerfile, target)
        users = [rest for stage in chain for w, rest in stage["lines"] if w == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), target
        assert any(w == "COPY" and rest.startswith("--from=builder") for stage in chain for w, rest in stage["lines"])
    assert any(w == "HEALTHCHECK" for w, _ in stages["node"]["lines"])
    assert healthcheck_command()[0] == "python"
    ignore = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*" and not [ln for ln in ignore if ln.startswith("!docker/") and "operators" in ln]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, Path], Path]:
    """The operators' folders as prepare.py makes them for compose (on this host)."""
    prepare = load_prepare()
    plan = prepare.load_plan(DOCKER / "operators.toml")
    out = tmp_path_factory.mktemp("compose") / "operators"
    folders = prepare.prepare(plan, out, PartyIdentity.generate().public_key)
    return prepare, plan, folders, out


def _mounts(service: dict[str, Any], compose: dict[str, Any]) -> dict[str, tuple[str, bool, str]]:
    """container path -> (host source relative to docker/, read-only, kind)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # a named volume, "name:/path"
            name, _, target = volume.partition(":")
            assert name in compose["volumes"], volume
            found[target] = (name, False, "volume")
            continue
        assert volume["type"] == "bind", volume
        found[volume["target"]] = (volume["source"], bool(volume.get("read_only")), "bind")
    for secret in service.get("secrets", []):
        source = secret["source"] if isinstance(secret, dict) else secret
        target = secret.get("target", f"/run/secrets/{source}") if isinstance(secret, dict) else \
            f"/run/secrets/{source}"
        found[target] = (compose["secrets"][source]["file"], True, "secret")
    return found


def test_node_services_run_what_the_three_host_test_runs(compose, dockerfile, prepared):
    prepare, plan, folders, _ = prepared
    services = compose["services"]
    network = compose["networks"]["fusion"]["ipam"]["config"]
    assert network == [{"subnet": plan.subnet}]
    runtime_workdir = [rest for w, rest in dockerfile["stages"]["runtime"]["lines"] if w == "WORKDIR"]
    assert runtime_workdir == [prepare.CONTAINER_FOLDER]
    health = healthcheck_command()
    for op in plan.operators:
        service, folder = services[op.node_id], folders[op.node_id]
        assert "environment" not in service and "env_file" not in service, op.node_id
        assert service["entrypoint"] + service["command"] == prepare.daemon_argv(plan, op), op.node_id
        assert service["networks"]["fusion"]["ipv4_address"] == op.host
        assert "working_dir" not in service  # the image's WORKDIR, the node folder
        mounts = _mounts(service, compose)
        expected_files = set(prepare.PUBLIC_FILES) | set(prepare.SECRET_FILES) | set(prepare.WRITABLE_FILES)
        assert {p.name for p in folder.iterdir()} == expected_files, op.node_id
        assert set(mounts) == {f"{prepare.CONTAINER_FOLDER}/{name}" for name in expected_files}, op.node_id
        for name in expected_files:
            source, read_only, kind = mounts[f"{prepare.CONTAINER_FOLDER}/{name}"]
            assert source == f"./operators/{op.node_id}/{name}", (op.node_id, name)
            made = folder / name
            if name in prepare.SECRET_FILES:
                assert kind == "secret" and stat.S_IMODE(made.stat().st_mode) == 0o600, (op.node_id, name)
            elif name in prepare.PUBLIC_FILES:
                assert kind == "bind" and read_only, (op.node_id, name)
            else:
                assert kind == "bind" and not read_only, (op.node_id, name)
        # Everything the node's config and bridge section read is inside the mounted files.
        cfg = load_config(folder / "node.toml")
        referenced = [cfg.identity_key, cfg.tls_cert, cfg.tls_key, cfg.storage.key_file, cfg.data_dir,
                      *(e.tls_cert for e in cfg.roster)]
        for path in referenced:
            assert path is not None and path.relative_to(folder).parts[0] in expected_files, path
        assert cfg.listen == cfg.me.address == plan.peer_address(op)
        assert f"http://{cfg.metrics_listen}/healthz" in health[-1]
        bridge = load_bridge_config(folder / "bridge.toml")
        assert {p.tls_cert.relative_to(folder).parts[0] for p in bridge.peers} == {"peers"}
        destination = services["anvil-destination"]["networks"]["fusion"]["ipv4_address"]
        assert bridge.destination_rpc == f"http://{destination}:{prepare.ANVIL_PORT}"


def test_chain_services_match_the_plan_and_the_bridge_sections(compose, prepared):
    prepare, plan, folders, out = prepared
    services = compose["services"]
    for name, host in (("bitcoin", plan.bitcoin), ("anvil-source", plan.anvil_source),
                       ("anvil-destination", plan.anvil_destination)):
        assert services[name]["networks"]["fusion"]["ipv4_address"] == host
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == host, name
        assert "environment" not in services[name]
    bitcoin = services["bitcoin"]["command"]
    assert bitcoin[bitcoin.index("--port") + 1] == str(prepare.BITCOIN_RPC_PORT)
    secret = bitcoin[bitcoin.index("--rpc-password-file") + 1]
    assert _mounts(services["bitcoin"], compose)[secret] == ("./operators/chains/bitcoin-rpc-password", True, "secret")
    password = (out / "chains" / "bitcoin-rpc-password").read_text().strip()
    for folder in folders.values():
        chains = {c.symbol: c for c in load_bridge_config(folder / "bridge.toml").chains}
        assert chains["BTC"].rpc == f"http://{plan.bitcoin}:{prepare.BITCOIN_RPC_PORT}"
        assert chains["BTC"].rpc_password == password and chains["BTC"].rpc_user == bitcoin[bitcoin.index(
            "--rpc-user") + 1]
        assert chains["ETH"].rpc == f"http://{plan.anvil_source}:{prepare.ANVIL_PORT}"


def test_the_systemd_unit_example_reloads_on_sighup_and_keeps_secrets_out(tmp_path):
    unit = (DOCKER / "fusion-prime-signer.service").read_text()
    settings = [ln.split("=", 1) for ln in unit.replace("\\\n", " ").splitlines()
                if ln and not ln.startswith(("#", "[")) and "=" in ln]
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert values["RestartPreventExitStatus"] == ["2"]  # an operator's error: a restart loop fixes nothing
    assert values["User"] != ["root"] and values["NoNewPrivileges"] == ["yes"]
    assert not [v for v in values.get("Environment", []) if re.search(r"PASS|SECRET|KEY=", v, re.I)]
    assert "--config node.toml" in values["ExecStart"][0] and "--policy policy.toml" in values["ExecStart"][0]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    result = subprocess.run([analyze, "verify", str(DOCKER / "fusion-prime-signer.service")], capture_output=True,
                            text=True, timeout=120)
    complaints = [ln for ln in (result.stdout + result.stderr).splitlines()
                  if ln.strip() and "is not executable" not in ln]  # not installed on this machine
    assert complaints == [], complaints
