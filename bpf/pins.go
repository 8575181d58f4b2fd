package bpf

import (
	"fmt"
	"path/filepath"
	"strings"
)

// DefaultRoot is where Aegis keeps its pinned state on a node.
const DefaultRoot = "/sys/fs/bpf/aegis"

// Paths is the one place that builds pin paths under a bpffs root, so the
// daemon, the CNI plugin and the CLI always agree on where things live.
//
//	<root>/maps/<map name>            maps (pinned by name at load)
//	<root>/progs/from_pod, to_pod     the current programs
//	<root>/links/<attachment>/ingress, egress   per-pod tcx links
type Paths struct {
	Root string
}

func (p Paths) Maps() string     { return filepath.Join(p.Root, "maps") }
func (p Paths) Programs() string { return filepath.Join(p.Root, "progs") }
func (p Paths) Links() string    { return filepath.Join(p.Root, "links") }

// Program is the pin of one of the datapath's entry programs.
func (p Paths) Program(name string) string { return filepath.Join(p.Programs(), name) }

// Attachment is the directory holding one pod interface's links. The name is
// derived from the CNI attachment key (container ID, interface name).
func (p Paths) Attachment(containerID, ifName string) string {
	return filepath.Join(p.Links(), AttachmentName(containerID, ifName))
}

// AttachmentName is the directory name of an attachment. bpffs refuses
// names with '.' and '/', and '_' separates the two parts, so all three are
// replaced in both; the "tmp-" prefix is reserved for half-built ones.
func AttachmentName(containerID, ifName string) string {
	clean := func(s string) string { return strings.NewReplacer("/", "-", "_", "-", ".", "-").Replace(s) }
	name := clean(containerID) + "_" + clean(ifName)
	if strings.HasPrefix(name, "tmp-") {
		name = "c" + name
	}
	return name
}

// ParseAttachmentName splits an attachment directory name.
func ParseAttachmentName(name string) (containerID, ifName string, err error) {
	i := strings.LastIndexByte(name, '_')
	if i <= 0 || i == len(name)-1 {
		return "", "", fmt.Errorf("parse attachment name %q: want <container>_<ifname>", name)
	}
	return name[:i], name[i+1:], nil
}
