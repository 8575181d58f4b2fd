package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Link pin names inside an attachment directory, named for the host veth's
// tcx hooks.
const (
	hookIngress = "ingress" // runs ProgFromPod
	hookEgress  = "egress"  // runs ProgToPod
)

// tmpPrefix marks attachment directories still being built. bpffs refuses
// names with a dot, so it cannot be a hidden name.
const tmpPrefix = "tmp-"

// Attachment is one pod interface's pair of tcx links.
type Attachment struct {
	ContainerID string
	IfName      string // the pod-side interface name (CNI_IFNAME)
	HostIfindex int    // the host-side veth in the node namespace
}

// ErrAttachmentMismatch says an attachment exists for the key but on
// another interface.
var ErrAttachmentMismatch = errors.New("attachment exists on another interface")

// Attach attaches the pinned programs on both tcx hooks of the host veth
// and pins the links under the attachment's directory. The links are pinned
// into a temporary directory first and renamed into place, so an attachment
// directory is always complete. Attaching what is already attached to the
// same interface is a no-op.
func Attach(paths Paths, a Attachment) error {
	final := paths.Attachment(a.ContainerID, a.IfName)
	if ifindex, err := attachedIfindex(final); err == nil {
		if ifindex == a.HostIfindex {
			return nil
		}
		// A stale attachment (a pod sandbox re-created with the same
		// container ID on a new veth) is replaced.
		if err := Detach(paths, a.ContainerID, a.IfName); err != nil {
			return err
		}
	}

	progs := map[string]string{hookIngress: ProgFromPod, hookEgress: ProgToPod}
	types := map[string]ebpf.AttachType{hookIngress: ebpf.AttachTCXIngress, hookEgress: ebpf.AttachTCXEgress}

	tmp, err := os.MkdirTemp(paths.Links(), tmpPrefix)
	if err != nil {
		return fmt.Errorf("create attachment directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	var links []link.Link
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	for _, hook := range []string{hookIngress, hookEgress} {
		prog, err := ebpf.LoadPinnedProgram(paths.Program(progs[hook]), nil)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("open program %s: %w", progs[hook], ErrNotLoaded)
			}
			return fmt.Errorf("open program %s: %w", progs[hook], err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.HostIfindex, Program: prog, Attach: types[hook]})
		prog.Close()
		if err != nil {
			return fmt.Errorf("attach %s hook of ifindex %d: %w", hook, a.HostIfindex, err)
		}
		links = append(links, l)
		if err := l.Pin(filepath.Join(tmp, hook)); err != nil {
			return fmt.Errorf("pin %s link: %w", hook, err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		// Unpinning happens through RemoveAll(tmp); closing the links
		// then detaches them.
		return fmt.Errorf("install attachment %s: %w", final, err)
	}
	return nil
}

// Detach removes an attachment's links. A missing attachment is success:
// DEL must be idempotent.
func Detach(paths Paths, containerID, ifName string) error {
	dir := paths.Attachment(containerID, ifName)
	// Removing the pins drops the last reference to each link, which
	// detaches it from the interface.
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove attachment %s: %w", dir, err)
	}
	return nil
}

// AttachmentStatus is what CHECK, GC and the CLI learn of an attachment.
type AttachmentStatus struct {
	ContainerID string
	IfName      string
	Ifindex     int   // 0 when the links are gone or defunct
	Err         error // why the attachment is not healthy
}

// ListAttachments reads every attachment under the links directory.
func ListAttachments(paths Paths) ([]AttachmentStatus, error) {
	dirs, err := os.ReadDir(paths.Links())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	var out []AttachmentStatus
	for _, d := range dirs {
		if !d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) {
			continue
		}
		cid, ifName, err := ParseAttachmentName(d.Name())
		if err != nil {
			continue
		}
		st := AttachmentStatus{ContainerID: cid, IfName: ifName}
		st.Ifindex, st.Err = attachedIfindex(filepath.Join(paths.Links(), d.Name()))
		out = append(out, st)
	}
	return out, nil
}

// CheckAttachment verifies both links of an attachment are live on ifindex.
func CheckAttachment(paths Paths, a Attachment) error {
	ifindex, err := attachedIfindex(paths.Attachment(a.ContainerID, a.IfName))
	if err != nil {
		return err
	}
	if ifindex != a.HostIfindex {
		return fmt.Errorf("check attachment: links on ifindex %d, want %d: %w", ifindex, a.HostIfindex, ErrAttachmentMismatch)
	}
	return nil
}

// CleanTemp removes half-built attachment directories an interrupted
// Attach left behind.
func CleanTemp(paths Paths) error {
	dirs, err := os.ReadDir(paths.Links())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list attachments: %w", err)
	}
	for _, d := range dirs {
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(paths.Links(), d.Name())); err != nil {
				return fmt.Errorf("remove %s: %w", d.Name(), err)
			}
		}
	}
	return nil
}

// attachedIfindex returns the interface both links of an attachment
// directory are attached to.
func attachedIfindex(dir string) (int, error) {
	ifindex := 0
	for _, hook := range []string{hookIngress, hookEgress} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, hook), nil)
		if err != nil {
			return 0, fmt.Errorf("open %s link: %w", hook, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return 0, fmt.Errorf("inspect %s link: %w", hook, err)
		}
		tcx := info.TCX()
		if tcx == nil || tcx.Ifindex == 0 {
			return 0, fmt.Errorf("%s link is detached (interface gone)", hook)
		}
		if ifindex != 0 && int(tcx.Ifindex) != ifindex {
			return 0, fmt.Errorf("links on different interfaces %d and %d", ifindex, tcx.Ifindex)
		}
		ifindex = int(tcx.Ifindex)
	}
	return ifindex, nil
}
