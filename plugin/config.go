package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/api"
)

// PluginConf is aegis-cni's entry in the conflist.
type PluginConf struct {
	types.PluginConf
	// Socket is aegisd's local API.
	Socket string `json:"socket,omitempty"`
	// BPFRoot is the bpffs directory holding the pinned programs and links.
	BPFRoot string `json:"bpfRoot,omitempty"`
	// LogFile receives the plugin's log (stdout belongs to the result).
	LogFile string `json:"logFile,omitempty"`
	// TimeoutSeconds bounds the wait for aegisd on ADD.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// ValidAttachments is set by the runtime on GC.
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`

	// rawPrev is prevResult exactly as the runtime sent it, passed on
	// unchanged by ADD.
	rawPrev json.RawMessage
}

// K8sArgs are the CNI_ARGS the kubelet passes.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the wire name
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

const (
	defaultLogFile = "/var/log/aegis/cni.log"
	defaultTimeout = 30
)

// parseConfig reads and validates everything up front: the plugin config,
// the prevResult (converted to the current result type) and CNI_ARGS.
// needPrev is true for ADD and CHECK: a chained plugin needs the primary
// plugin's result.
func parseConfig(args *skel.CmdArgs, needPrev bool) (*PluginConf, *current.Result, *K8sArgs, error) {
	conf := &PluginConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, nil, nil, fmt.Errorf("parse network configuration: %w", err)
	}
	var raw struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(args.StdinData, &raw); err != nil {
		return nil, nil, nil, fmt.Errorf("parse network configuration: %w", err)
	}
	conf.rawPrev = raw.PrevResult
	if conf.CNIVersion == "" {
		return nil, nil, nil, fmt.Errorf("parse network configuration: cniVersion is missing")
	}
	if ok, err := version.GreaterThanOrEqualTo(conf.CNIVersion, "0.3.0"); err != nil || !ok {
		return nil, nil, nil, fmt.Errorf("parse network configuration: cniVersion %q is not supported (0.3.0 to 1.1.0)", conf.CNIVersion)
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	if conf.BPFRoot == "" {
		conf.BPFRoot = bpf.DefaultRoot
	}
	if conf.LogFile == "" {
		conf.LogFile = defaultLogFile
	}
	if conf.TimeoutSeconds <= 0 {
		conf.TimeoutSeconds = defaultTimeout
	}
	if !strings.HasPrefix(conf.Socket, "/") {
		return nil, nil, nil, fmt.Errorf("parse network configuration: socket %q must be an absolute path", conf.Socket)
	}
	if !strings.HasPrefix(conf.BPFRoot, "/") {
		return nil, nil, nil, fmt.Errorf("parse network configuration: bpfRoot %q must be an absolute path", conf.BPFRoot)
	}

	var prev *current.Result
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, nil, nil, fmt.Errorf("parse prevResult: %w", err)
		}
		var err error
		prev, err = current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("convert prevResult: %w", err)
		}
	}
	if needPrev && prev == nil {
		return nil, nil, nil, fmt.Errorf("must be called as a chained plugin: no prevResult in the configuration")
	}

	k8s := &K8sArgs{}
	if err := types.LoadArgs(args.Args, k8s); err != nil {
		return nil, nil, nil, fmt.Errorf("parse CNI_ARGS: %w", err)
	}
	return conf, prev, k8s, nil
}
