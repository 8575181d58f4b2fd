package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/conf/install"
	"github.com/aegis-cni/aegis/daemon/api"
)

// runInstall inserts aegis-cni into the node's conflist after the primary
// plugin (install) or takes it out again (uninstall), and optionally copies
// this binary into the CNI bin directory.
func runInstall(cmd string, argv []string) error {
	fs := flag.NewFlagSet("aegis-cni "+cmd, flag.ContinueOnError)
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "directory the container runtime reads conflists from")
	conflist := fs.String("conflist", "", "conflist to edit (default: the one the runtime uses in --conf-dir)")
	after := fs.String("after", "azure-vnet", "type of the primary plugin to insert after (install)")
	socket := fs.String("socket", api.DefaultSocket, "aegisd's socket, written into the plugin entry (install)")
	bpfRoot := fs.String("bpf-root", bpf.DefaultRoot, "bpffs root, written into the plugin entry (install)")
	logFile := fs.String("log-file", defaultLogFile, "plugin log file, written into the plugin entry (install)")
	binDir := fs.String("bin-dir", "", "also copy this binary into this CNI bin directory (install), or remove it from there (uninstall)")
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: aegis-cni %s [flags]\n\n", cmd)
		if cmd == "install" {
			fmt.Fprintln(os.Stderr, "Inserts aegis-cni into the node's conflist right after the primary plugin,\natomically and idempotently, keeping every other plugin and field.")
		} else {
			fmt.Fprintln(os.Stderr, "Removes aegis-cni from the node's conflist, keeping everything else.")
		}
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		return err
	}
	path := *conflist
	if path == "" {
		var err error
		if path, err = install.FindConflist(*confDir); err != nil {
			return err
		}
	}
	var changed bool
	var err error
	if cmd == "install" {
		if *binDir != "" {
			if err := copySelf(filepath.Join(*binDir, "aegis-cni")); err != nil {
				return err
			}
		}
		entry := map[string]any{"type": "aegis-cni", "socket": *socket, "bpfRoot": *bpfRoot, "logFile": *logFile}
		changed, err = install.Install(path, entry, *after)
	} else {
		changed, err = install.Uninstall(path, "aegis-cni")
		if err == nil && *binDir != "" {
			if rerr := os.Remove(filepath.Join(*binDir, "aegis-cni")); rerr != nil && !os.IsNotExist(rerr) {
				err = fmt.Errorf("remove binary: %w", rerr)
			}
		}
	}
	if err != nil {
		return err
	}
	if changed {
		fmt.Printf("%s: updated\n", path)
	} else {
		fmt.Printf("%s: already up to date\n", path)
	}
	return nil
}

// copySelf installs this executable at dst atomically.
func copySelf(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	in, err := os.Open(self)
	if err != nil {
		return fmt.Errorf("open own binary: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".aegis-cni-")
	if err != nil {
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	return os.Rename(tmp.Name(), dst)
}
