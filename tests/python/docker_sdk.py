"""The Docker SDK for Python (`docker` from PyPI) against a shoal manager.

Run by tests/tests/engine_api.rs with SHOAL_DOCKER_HOST (the manager's API,
tcp://IP:PORT) and SHOAL_IMAGE (the offline test image). What each call
does is checked in the machine's own Docker engine (docker.from_env() with
DOCKER_HOST unset), not only in what the manager answers. Exits non-zero
with a message on the first thing that is not as a Swarm user expects.
"""

import os
import sys
import time

import docker
from docker.errors import APIError, NotFound
from docker.types import (
    ConfigReference,
    DNSConfig,
    EndpointSpec,
    Healthcheck,
    IPAMConfig,
    IPAMPool,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    Ulimit,
    UpdateConfig,
)

HOST = os.environ["SHOAL_DOCKER_HOST"]
IMAGE = os.environ["SHOAL_IMAGE"]
DEADLINE = 90

shoal = docker.DockerClient(base_url=HOST, version="auto", timeout=60)
engine = docker.from_env()


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def wait(what, f, explain=None):
    """Polls f() until it returns something true, at most DEADLINE s;
    explain() adds to the failure message."""
    until = time.time() + DEADLINE
    last = None
    while time.time() < until:
        last = f()
        if last:
            print(f"ok: {what}", flush=True)
            return last
        time.sleep(0.2)
    extra = f"; {explain()}" if explain else ""
    sys.exit(f"FAILED: {what} (last seen: {last!r}){extra}")


def containers(name):
    # Sparse: a container removed between listing and inspecting is no error.
    return engine.containers.list(sparse=True, filters={"label": f"shoal.service.name={name}", "status": "running"})


def env_of(c):
    c.reload()
    return c.attrs["Config"]["Env"] or []


def _try(f):
    try:
        f()
        return True
    except APIError:
        return False


def lower_keys(v, free=("Labels",)):
    """Keys in lower case (Go's decoder matches keys case-insensitively),
    except the user's own keys inside labels."""
    if isinstance(v, dict):
        return {k.lower(): (val if k in free else lower_keys(val)) for k, val in v.items()}
    if isinstance(v, list):
        return [lower_keys(x) for x in v]
    return v


# The handshake and the swarm.
check(shoal.ping() is True, "ping")
version = shoal.version()
check(version["ApiVersion"] == "1.47", f"API version {version['ApiVersion']}")
info = shoal.info()
check(info["Swarm"]["LocalNodeState"] == "active" and info["Swarm"]["ControlAvailable"] is True, "info: an active manager")
shoal.swarm.reload()
check(shoal.swarm.attrs["JoinTokens"]["Worker"] != "", "swarm: join tokens")

# Nodes: list, filter, update.
nodes = shoal.nodes.list()
check(sorted(n.attrs["Description"]["Hostname"] for n in nodes) == ["node1", "node2"], "two nodes")
check(len(shoal.nodes.list(filters={"role": "manager"})) == 1, "one manager")
node2 = shoal.nodes.get("node2")
check(node2.update({"Availability": "active", "Role": "worker", "Labels": {"zone": "a"}}) is True, "node update")
node2.reload()
check(node2.attrs["Spec"]["Labels"] == {"zone": "a"}, "node labels set")
stale = node2.version - 1
try:
    shoal.api.update_node(node2.id, stale, {"Availability": "drain", "Role": "worker", "Labels": {}})
    sys.exit("FAILED: a node update for a stale version was accepted")
except APIError as e:
    check("update out of sequence" in str(e), f"stale node update refused: {e}")
node2.reload()
check(node2.attrs["Spec"]["Availability"] == "active", "the stale node update changed nothing")

# A service with every option group shoal runs today.
svc = shoal.services.create(
    IMAGE,
    command=["sh", "-c"],
    args=["echo started $COLOR; exec sleep 100000"],
    name="sdk",
    env=["COLOR=blue"],
    labels={"tier": "web"},
    mode=ServiceMode("replicated", replicas=2),
    endpoint_spec=EndpointSpec(ports={9301: 9301}),
    update_config=UpdateConfig(parallelism=2, delay=1_000_000_000, failure_action="rollback", monitor=1_000_000_000,
                               order="start-first"),
    restart_policy=RestartPolicy(condition="on-failure", delay=2_000_000_000, max_attempts=3),
    mounts=[Mount("/host-tmp", "/tmp", type="bind", read_only=True)],
    stop_grace_period=3_000_000_000,
    constraints=["node.role==manager"],
)
sent = {
    "Name": "sdk",
    "Labels": {"tier": "web"},
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": IMAGE, "Command": ["sh", "-c"], "Args": ["echo started $COLOR; exec sleep 100000"],
            "Env": ["COLOR=blue"], "StopGracePeriod": 3_000_000_000,
            "Mounts": [{"Target": "/host-tmp", "Source": "/tmp", "Type": "bind", "ReadOnly": True}],
        },
        "RestartPolicy": {"Condition": "on-failure", "Delay": 2_000_000_000, "MaxAttempts": 3, "Window": 0},
        "Placement": {"Constraints": ["node.role==manager"]},
    },
    "Mode": {"Replicated": {"Replicas": 2}},
    "UpdateConfig": {"Parallelism": 2, "Delay": 1_000_000_000, "FailureAction": "rollback",
                     "Monitor": 1_000_000_000, "Order": "start-first"},
    "EndpointSpec": {"Ports": [{"PublishedPort": 9301, "TargetPort": 9301, "Protocol": "tcp"}]},
}
svc.reload()
spec = svc.attrs["Spec"]
check("Replicated" in spec["Mode"], "Mode comes back in Docker's casing")
check(lower_keys(spec) == lower_keys(sent), f"inspect returns the spec sent: {spec}")

# In Docker: two containers, on the manager only, as asked.
manager_id = shoal.nodes.list(filters={"role": "manager"})[0].id
running = wait("two running containers", lambda: len(containers("sdk")) == 2 and containers("sdk"))
for c in running:
    c.reload()
    check(c.labels["shoal.node.id"] == manager_id, "placed on the manager (constraint)")
    check("COLOR=blue" in env_of(c), "env reached the container")
    mount = [m for m in c.attrs["Mounts"] if m["Destination"] == "/host-tmp"]
    check(mount and mount[0]["RW"] is False, "the bind mount is read-only")
    check(c.attrs["Config"]["Entrypoint"] == ["sh", "-c"], "Command became the entrypoint")

# Tasks name the containers Docker runs.


def running_tasks(n):
    ts = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
    return ts if len(ts) == n else None


tasks = wait("two running tasks", lambda: running_tasks(2))
ids = {t["Status"]["ContainerStatus"]["ContainerID"] for t in tasks}
check(ids == {c.id for c in containers("sdk")}, "task container IDs match Docker's")

# Logs through the multiplexed stream.


def started_lines():
    lines = [line for line in svc.logs(stdout=True, stderr=True) if b"started blue" in line]
    return lines if len(lines) >= 2 else None


wait("logs of both tasks", started_lines)

# Scale, then an update (the SDK fetches the version) with a force.
check(svc.scale(3), "scale to 3")
wait("three running containers", lambda: len(containers("sdk")) == 3)
svc.reload()
old_version = svc.version
check(svc.update(env=["COLOR=green"], force_update=True), "update")
wait("every container with COLOR=green", lambda: len(containers("sdk")) == 3
     and all("COLOR=green" in env_of(c) for c in containers("sdk")))
svc.reload()
check(svc.attrs["Spec"]["TaskTemplate"]["ForceUpdate"] == 1, "ForceUpdate counted")
check(svc.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 3, "the update kept the replicas")

# An update for a version that is gone is refused, in Docker's words.
try:
    shoal.api.update_service(svc.id, old_version, task_template=svc.attrs["Spec"]["TaskTemplate"], name="sdk")
    sys.exit("FAILED: a stale update was accepted")
except APIError as e:
    check("update out of sequence" in str(e), f"stale update refused: {e}")

# Unknown objects are NotFound.
try:
    shoal.services.get("nope")
    sys.exit("FAILED: an unknown service was found")
except NotFound:
    check(True, "unknown service: NotFound")

# Remove: the containers go.
check(svc.remove() is True, "remove")
wait("no containers left", lambda: len(containers("sdk")) == 0)
check(shoal.services.list(filters={"name": "sdk"}) == [], "gone from the list")
# Every option group of the task spec: resources, a health check, secrets
# and configs, placement preferences and max per node, container options,
# volume and tmpfs mounts, a log driver, a network; then a job. Each is
# checked in what inspect returns and in the container Docker runs.
# A range of its own: the machine's engine is shared with other tests.
network = shoal.networks.create("sdknet", driver="overlay", labels={"team": "sdk"},
                                ipam=IPAMConfig(pool_configs=[IPAMPool(subnet="10.231.0.0/16")]))
check(shoal.networks.get("sdknet").attrs["Driver"] == "overlay", "an overlay network")
secret = shoal.secrets.create(name="sdk_pw", data=b"hunter2", labels={"k": "v"})
config = shoal.configs.create(name="sdk_conf", data=b"port=1\n")
check(shoal.secrets.get("sdk_pw").attrs["Spec"]["Name"] == "sdk_pw", "a secret")
check(shoal.configs.get("sdk_conf").attrs["Spec"]["Name"] == "sdk_conf", "a config")
opts = shoal.services.create(
    IMAGE,
    command=["sh", "-c", "echo opts; exec sleep 100000"],
    name="sdkopts",
    hostname="opts-{{.Task.Slot}}",
    user="0:0",
    workdir="/tmp",
    groups=["100"],
    init=True,
    read_only=True,
    stop_signal="SIGINT",
    cap_add=["NET_ADMIN"],
    cap_drop=["MKNOD"],
    sysctls={"net.ipv4.ip_unprivileged_port_start": "80"},
    hosts={"db.local": "10.1.2.3"},
    dns_config=DNSConfig(nameservers=["10.9.9.9"], search=["example.org"], options=["ndots:2"]),
    container_labels={"role": "opts"},
    healthcheck=Healthcheck(test=["CMD-SHELL", "true"], interval=1_000_000_000, timeout=2_000_000_000,
                            retries=2, start_period=1_000_000_000),
    resources=Resources(cpu_limit=500_000_000, mem_limit=64 * 1024 * 1024,
                        cpu_reservation=10_000_000, mem_reservation=16 * 1024 * 1024),
    secrets=[SecretReference(secret.id, "sdk_pw", filename="pw", mode=0o400)],
    configs=[ConfigReference(config.id, "sdk_conf", filename="/etc/app.conf")],
    preferences=[("spread", "node.labels.zone")],
    maxreplicas=1,
    mounts=[Mount("/data", "sdkvol", type="volume", labels={"v": "1"}),
            Mount("/scratch", None, type="tmpfs", tmpfs_size=1024 * 1024)],
    log_driver="json-file",
    log_driver_options={"max-size": "1m"},
    networks=["sdknet"],
    mode=ServiceMode("replicated", replicas=2),
)
opts.reload()
ospec = opts.attrs["Spec"]
tt = ospec["TaskTemplate"]
cs = tt["ContainerSpec"]
check(cs["Hostname"] == "opts-{{.Task.Slot}}" and cs["User"] == "0:0" and cs["Dir"] == "/tmp", "container options kept")
check(cs["HealthCheck"]["Test"] == ["CMD-SHELL", "true"] and cs["HealthCheck"]["Retries"] == 2, "health check kept")
check(cs["Secrets"][0]["File"]["Name"] == "pw" and cs["Secrets"][0]["SecretID"] == secret.id, "secret reference kept")
check(cs["Configs"][0]["File"]["Name"] == "/etc/app.conf", "config reference kept")
check(tt["Resources"]["Reservations"]["MemoryBytes"] == 16 * 1024 * 1024, "reservations kept")
check(tt["Placement"]["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
      and tt["Placement"]["MaxReplicas"] == 1, "placement preferences and max replicas kept")
check([m["Type"] for m in cs["Mounts"]] == ["volume", "tmpfs"], "volume and tmpfs mounts kept")
check(tt["LogDriver"]["Name"] == "json-file", "log driver kept")

# MaxReplicas 1 on two nodes: one container on each.
ocs = wait("two running containers of sdkopts", lambda: len(containers("sdkopts")) == 2 and containers("sdkopts"),
           lambda: [(t["Status"]["State"], t["Status"].get("Err")) for t in opts.tasks()])
for c in ocs:
    c.reload()
check(len({c.labels["shoal.node.id"] for c in ocs}) == 2, "one per node (max replicas per node)")
for c in ocs:
    cfg, hc = c.attrs["Config"], c.attrs["HostConfig"]
    slot = c.labels.get("shoal.task.slot", "")
    check(cfg["Hostname"].startswith("opts-") and cfg["User"] == "0:0" and cfg["WorkingDir"] == "/tmp",
          f"hostname, user, workdir in Docker: {cfg['Hostname']} {slot}")
    check(cfg["StopSignal"] == "SIGINT" and cfg["Labels"].get("role") == "opts", "stop signal and labels in Docker")
    check(cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"] and cfg["Healthcheck"]["Retries"] == 2,
          "the health check in Docker")
    check(hc["Init"] is True and hc["ReadonlyRootfs"] is True, "init and a read-only rootfs in Docker")
    check(hc["GroupAdd"] == ["100"], "groups in Docker")
    check("NET_ADMIN" in (hc["CapAdd"] or []) and "MKNOD" in (hc["CapDrop"] or []), "capabilities in Docker")
    check(hc["Sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "80"}, "sysctls in Docker")
    check("db.local:10.1.2.3" in (hc["ExtraHosts"] or []), f"hosts in Docker: {hc['ExtraHosts']}")
    check(hc["DnsSearch"] == ["example.org"] and hc["DnsOptions"] == ["ndots:2"], "DNS search and options in Docker")
    check(hc["NanoCpus"] == 500_000_000 and hc["Memory"] == 64 * 1024 * 1024, "limits in Docker")
    check(hc["MemoryReservation"] == 16 * 1024 * 1024, "the memory reservation as Docker's soft limit")
    check(hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}, f"log driver: {hc['LogConfig']}")
    kinds = {m["Destination"]: m["Type"] for m in c.attrs["Mounts"]}
    check(kinds.get("/data") == "volume", f"the volume mount in Docker: {kinds}")
    check("/scratch" in (hc.get("Tmpfs") or {}) or any(m.get("Target") == "/scratch" and m.get("Type") == "tmpfs"
                                                       for m in hc.get("Mounts") or []), "the tmpfs mount in Docker")
    check(set(c.attrs["NetworkSettings"]["Networks"]) & {n.name for n in engine.networks.list()
                                                         if "sdknet" in n.name}, "joined sdknet's Docker network")
    out = c.exec_run(["cat", "/run/secrets/pw", "/etc/app.conf"])
    check(out.exit_code == 0 and out.output == b"hunter2port=1\n", f"secret and config files: {out.output!r}")
wait("healthy containers", lambda: all(
    (c.reload() or c.attrs["State"].get("Health", {}).get("Status")) == "healthy" for c in containers("sdkopts")))

# A job: runs to completion, once per completion.
job = shoal.services.create(IMAGE, command=["sh", "-c", "echo done"], name="sdkjob",
                            mode=ServiceMode("replicated-job", concurrency=1, replicas=2))
job.reload()
check(job.attrs["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 2}},
      f"the job mode round-trips: {job.attrs['Spec']['Mode']}")
wait("two completed job tasks", lambda: len([t for t in job.tasks() if t["Status"]["State"] == "complete"]) == 2)

for s_ in (opts, job):
    check(s_.remove() is True, f"remove {s_.name}")
wait("no sdkopts containers left", lambda: len(containers("sdkopts")) == 0)
secret.remove()
config.remove()
wait("sdknet removable", lambda: _try(network.remove))

print("all checks passed")
