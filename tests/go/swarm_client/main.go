// The Docker Go SDK (github.com/docker/docker/client, Debian's
// golang-github-docker-docker-dev) against a shoal manager.
//
// Run by tests/tests/engine_api.rs with SHOAL_DOCKER_HOST (the manager's
// API, tcp://IP:PORT), SHOAL_IMAGE (the offline test image) and
// SHOAL_NODES (how many nodes the cluster has). What each call does is
// checked in the machine's own Docker engine too, not only in what the
// manager answers. Exits non-zero with a message on the first thing that is
// not as a Swarm user expects; prints "all checks passed" at the end.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

const name = "gosdk"

var ctx = context.Background()

func check(ok bool, what string, args ...interface{}) {
	msg := fmt.Sprintf(what, args...)
	if !ok {
		fmt.Println("FAILED: " + msg)
		os.Exit(1)
	}
	fmt.Println("ok: " + msg)
}

func must(err error, what string) {
	if err != nil {
		fmt.Printf("FAILED: %s: %v\n", what, err)
		os.Exit(1)
	}
}

// wait polls f until it returns "", at most 90 s; f's answer is what it saw.
func wait(what string, f func() string) {
	deadline := time.Now().Add(90 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		if last = f(); last == "" {
			fmt.Println("ok: " + what)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("FAILED: %s (last seen: %s)\n", what, last)
	os.Exit(1)
}

func runningTasks(shoal *client.Client, service string) []swarm.Task {
	f := filters.NewArgs(filters.Arg("service", service), filters.Arg("desired-state", "running"))
	tasks, err := shoal.TaskList(ctx, types.TaskListOptions{Filters: f})
	must(err, "task list")
	var out []swarm.Task
	for _, t := range tasks {
		if t.Status.State == swarm.TaskStateRunning && t.Status.ContainerStatus != nil &&
			t.Status.ContainerStatus.ContainerID != "" {
			out = append(out, t)
		}
	}
	return out
}

func containers(engine *client.Client) []types.Container {
	f := filters.NewArgs(filters.Arg("label", "shoal.service.name="+name), filters.Arg("status", "running"))
	cs, err := engine.ContainerList(ctx, types.ContainerListOptions{Filters: f})
	must(err, "container list")
	return cs
}

func main() {
	shoal, err := client.NewClientWithOpts(client.WithHost(os.Getenv("SHOAL_DOCKER_HOST")),
		client.WithAPIVersionNegotiation())
	must(err, "a client for shoal")
	// The machine's engine, where the containers run.
	engine, err := client.NewClientWithOpts(client.WithHost("unix:///var/run/docker.sock"),
		client.WithAPIVersionNegotiation())
	must(err, "a client for the machine's engine")
	image := os.Getenv("SHOAL_IMAGE")
	nodes, _ := strconv.Atoi(os.Getenv("SHOAL_NODES"))

	ping, err := shoal.Ping(ctx)
	must(err, "ping")
	check(ping.APIVersion != "" && ping.OSType == "linux", "ping: API %s, %s", ping.APIVersion, ping.OSType)
	info, err := shoal.Info(ctx)
	must(err, "info")
	check(info.Swarm.LocalNodeState == swarm.LocalNodeStateActive && info.Swarm.ControlAvailable,
		"info: an active manager")

	list, err := shoal.NodeList(ctx, types.NodeListOptions{})
	must(err, "node list")
	check(len(list) == nodes, "%d nodes listed", len(list))
	for _, n := range list {
		check(n.Description.Hostname != "" && n.Status.State == swarm.NodeStateReady &&
			n.Description.Resources.NanoCPUs > 0 && n.Description.Resources.MemoryBytes > 0,
			"node %s is ready and reports its resources", n.Description.Hostname)
	}

	replicas := uint64(2)
	grace := 3 * time.Second
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{"sdk": "go"}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:           image,
				Command:         []string{"sh", "-c", "echo started; exec sleep 100000"},
				Env:             []string{"COLOR=blue"},
				StopGracePeriod: &grace,
			},
			Resources: &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 64 << 20}},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
	}
	created, err := shoal.ServiceCreate(ctx, spec, types.ServiceCreateOptions{})
	must(err, "service create")
	check(created.ID != "" && len(created.Warnings) == 0, "created %s, no warnings %v", created.ID, created.Warnings)
	_, err = shoal.ServiceCreate(ctx, spec, types.ServiceCreateOptions{})
	check(err != nil && strings.Contains(err.Error(), "already"), "a second service of that name refused: %v", err)

	svc, _, err := shoal.ServiceInspectWithRaw(ctx, name, types.ServiceInspectOptions{})
	must(err, "service inspect")
	check(svc.ID == created.ID && svc.Spec.Name == name && svc.Spec.Labels["sdk"] == "go", "inspect by name")
	check(*svc.Spec.Mode.Replicated.Replicas == 2 && svc.Spec.TaskTemplate.ContainerSpec.Env[0] == "COLOR=blue" &&
		*svc.Spec.TaskTemplate.ContainerSpec.StopGracePeriod == grace &&
		svc.Spec.TaskTemplate.Resources.Limits.MemoryBytes == 64<<20, "inspect returns the spec sent")

	wait("two running tasks, each naming its container", func() string {
		ts := runningTasks(shoal, created.ID)
		if len(ts) != 2 {
			return fmt.Sprintf("%d running tasks", len(ts))
		}
		cs := containers(engine)
		ids := map[string]bool{}
		for _, c := range cs {
			ids[c.ID] = true
		}
		for _, t := range ts {
			if !ids[t.Status.ContainerStatus.ContainerID] || t.NodeID == "" || t.Slot == 0 {
				return fmt.Sprintf("task %s: container %s not among %d running", t.ID,
					t.Status.ContainerStatus.ContainerID, len(cs))
			}
		}
		return ""
	})
	for _, c := range containers(engine) {
		j, err := engine.ContainerInspect(ctx, c.ID)
		must(err, "container inspect")
		check(j.HostConfig.Memory == 64<<20, "the memory limit reached container %s", c.ID[:12])
	}

	// Update with the version just read: 3 replicas and a new env.
	stale := svc.Version
	three := uint64(3)
	spec.Mode.Replicated.Replicas = &three
	spec.TaskTemplate.ContainerSpec.Env = []string{"COLOR=green"}
	_, err = shoal.ServiceUpdate(ctx, created.ID, svc.Version, spec, types.ServiceUpdateOptions{})
	must(err, "service update")
	svc, _, err = shoal.ServiceInspectWithRaw(ctx, created.ID, types.ServiceInspectOptions{})
	must(err, "service inspect")
	check(svc.Version.Index > stale.Index && *svc.Spec.Mode.Replicated.Replicas == 3, "the update is in the spec")
	_, err = shoal.ServiceUpdate(ctx, created.ID, stale, spec, types.ServiceUpdateOptions{})
	check(err != nil && strings.Contains(err.Error(), "update out of sequence"), "a stale update refused: %v", err)
	wait("three containers with COLOR=green", func() string {
		cs := containers(engine)
		if len(cs) != 3 {
			return fmt.Sprintf("%d containers", len(cs))
		}
		for _, c := range cs {
			j, err := engine.ContainerInspect(ctx, c.ID)
			if err != nil {
				return err.Error()
			}
			env := strings.Join(j.Config.Env, " ")
			if !strings.Contains(env, "COLOR=green") {
				return "env " + env
			}
		}
		return ""
	})

	services, err := shoal.ServiceList(ctx, types.ServiceListOptions{
		Filters: filters.NewArgs(filters.Arg("name", name)),
	})
	must(err, "service list")
	check(len(services) == 1 && services[0].ID == created.ID, "listed by name")

	must(shoal.ServiceRemove(ctx, created.ID), "service remove")
	_, _, err = shoal.ServiceInspectWithRaw(ctx, created.ID, types.ServiceInspectOptions{})
	check(client.IsErrNotFound(err), "gone: %v", err)
	wait("no containers left", func() string {
		if n := len(containers(engine)); n != 0 {
			return fmt.Sprintf("%d containers", n)
		}
		return ""
	})
	fmt.Println("all checks passed")
}
