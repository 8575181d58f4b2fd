// Package install chains a CNI plugin into the node's conflist, right
// after the primary plugin, and takes it out again. It is what
// `aegis-cni install` and `aegis-cni uninstall` are built on:
//
//	path, err := install.FindConflist("/etc/cni/net.d")
//	entry := map[string]any{"type": "aegis-cni", "socket": "/var/run/aegis/aegisd.sock",
//		"bpfRoot": "/sys/fs/bpf/aegis", "logFile": "/var/log/aegis/cni.log"}
//	changed, err := install.Install(path, entry, "azure-vnet")
//	changed, err = install.Uninstall(path, "aegis-cni")
//
// Edits are made on the file's bytes, not on a re-encoding of them: every
// other plugin, every field the package does not know, their order and
// the file's own layout stay exactly as they were. The entry is written
// in the file's indentation, with "type" first and the other keys sorted,
// and Uninstall removes exactly what Install added, so an install followed
// by an uninstall gives back the original file byte for byte.
//
// Both are idempotent and say whether they changed the file. Writes are
// atomic: a temporary file in the same directory (its name ends neither
// in .conflist, .conf nor .json, so a runtime reading the directory never
// picks it up), synced, given the original's mode, renamed over it. A
// reader sees the old file or the new one, never a part. A symlinked
// conflist is edited where it points.
//
// Only a .conflist can chain plugins: the runtime reads a .conf or .json
// file as a single plugin, so both are refused. Errors name the file and
// what is wrong with it.
//
// Two editors racing on the same file (an installer and, on AKS, CNS
// regenerating its conflist) are not serialized: the last rename wins.
// Whoever keeps the plugin installed should watch the file and install
// again when it changes.
package install
