package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/walferry/walferry/k8s/render"
)

func TestK8sRender(t *testing.T) {
	out := t.TempDir()
	code, stdout, stderr := run(t, "k8s", "render", "--site", "primary", "--name", "xkube", "--repo", "s3://bucket/xkube",
		"--instances", "3", "--out", out)
	if code != 0 {
		t.Fatalf("primary: exit %d: %s", code, stderr)
	}
	code, _, stderr = run(t, "k8s", "render", "--site", "standby", "--name", "xkube", "--repo", "s3://bucket/xkube",
		"--source-host", "xkube.prod.example.com", "--out", out)
	if code != 0 {
		t.Fatalf("standby: exit %d: %s", code, stderr)
	}
	for _, f := range []string{"base/kustomization.yaml", "xkube-primary/statefulset.yaml", "xkube-standby/statefulset.yaml"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
		if !strings.Contains(stdout, "base/kustomization.yaml") {
			t.Errorf("the files written are not listed: %s", stdout)
		}
	}
	code, _, stderr = run(t, "k8s", "render", "--site", "standby", "--name", "xkube", "--repo", "s3://other/xkube", "--out", out)
	expectFailure(t, exitUsage, stderr, code, "--force")
	code, _, stderr = run(t, "k8s", "render", "--site", "dr", "--name", "xkube", "--repo", "s3://bucket/xkube", "--out", t.TempDir())
	expectFailure(t, exitUsage, stderr, code, "--site")
}

// TestK8sRenderedArgsAreFlags: every argument the rendered manifests
// give the walferry image is parsed by the command's own flags, the way
// walferry itself parses them: no flag this build lacks, no value
// missing, no stray argument.
func TestK8sRenderedArgsAreFlags(t *testing.T) {
	a := newApp(io.Discard, io.Discard, buildInfo{Version: "test"})
	cases := []render.Options{
		{Site: render.SitePrimary, Name: "xkube", Repo: "s3://b/x", Instances: 3, WALReceive: true},
		{Site: render.SitePrimary, Name: "xkube", Repo: "gs://b/x", BackupCronJob: true},
		{Site: render.SiteStandby, Name: "xkube", Repo: "s3://b/x", Instances: 3, SourceHost: "xkube.prod.example.com"},
		{Site: render.SiteStandby, Name: "xkube", Repo: "azure://c/x"},
	}
	checked := map[string]bool{}
	for _, o := range cases {
		files, err := render.Render(o)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range walferryContainers(t, files) {
			cmd, name, args := a.commandOf(t, c.Args)
			fs := flag.NewFlagSet(name, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			for _, f := range cmd.Flags {
				if err := f.Apply(fs); err != nil {
					t.Fatal(err)
				}
			}
			if err := fs.Parse(args); err != nil {
				t.Errorf("container %s: walferry %s %q: %v", c.Name, name, args, err)
			} else if fs.NArg() != 0 {
				t.Errorf("container %s: walferry %s: stray arguments %q", c.Name, name, fs.Args())
			}
			if cmd.Name == "sidecar" {
				if l := fs.Lookup("listen"); l == nil || l.Value.String() != defaultSidecarAddress {
					t.Errorf("the sidecar is rendered with --listen %v, its default is %s (the probes' port)", l, defaultSidecarAddress)
				}
			}
			checked[name] = true
		}
	}
	for _, want := range []string{"bootstrap", "sidecar", "repo init", "backup-push"} {
		if !checked[want] {
			t.Errorf("no rendered container runs walferry %s", want)
		}
	}
	// postgresql.conf's hooks.
	for _, hook := range []string{"archive-push", "archive-get"} {
		if a.cli.Command(hook) == nil {
			t.Errorf("postgresql.conf runs walferry-hook %s, which walferry lacks", hook)
		}
	}
}

// commandOf finds the (sub)command args name and the arguments after it.
func (a *app) commandOf(t *testing.T, args []string) (cmd *cli.Command, name string, rest []string) {
	t.Helper()
	if len(args) == 0 {
		t.Fatal("a walferry container without arguments")
	}
	cmd = a.cli.Command(args[0])
	if cmd == nil {
		t.Fatalf("walferry has no command %q", args[0])
	}
	name, args = args[0], args[1:]
	for len(args) > 0 && len(cmd.Subcommands) > 0 {
		sub := cmd.Command(args[0])
		if sub == nil {
			break
		}
		cmd, name, args = sub, name+" "+args[0], args[1:]
	}
	return cmd, name, args
}

// walferryContainers decodes the rendered workloads and returns the
// containers that run the walferry image.
func walferryContainers(t *testing.T, files []render.File) []corev1.Container {
	t.Helper()
	var out []corev1.Container
	for _, f := range files {
		for _, part := range strings.Split(string(f.Data), "\n---\n") {
			var obj struct {
				Kind string `json:"kind"`
				Spec struct {
					Template    corev1.PodTemplateSpec `json:"template"`
					JobTemplate struct {
						Spec struct {
							Template corev1.PodTemplateSpec `json:"template"`
						} `json:"spec"`
					} `json:"jobTemplate"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(part), &obj); err != nil {
				t.Fatalf("%s: %v", f.Path, err)
			}
			var spec corev1.PodSpec
			switch obj.Kind {
			case "StatefulSet":
				spec = obj.Spec.Template.Spec
			case "CronJob":
				spec = obj.Spec.JobTemplate.Spec.Template.Spec
			default:
				continue
			}
			for _, c := range append(spec.InitContainers, spec.Containers...) {
				if c.Image == render.DefaultImage {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
