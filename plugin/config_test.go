package main

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

const validConf = `{"cniVersion":"0.3.0","name":"azure","type":"aegis-cni","socket":"/run/a.sock",
"prevResult":{"cniVersion":"0.3.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.244.1.5/24"}]}}`

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, stdin, args string
		needPrev          bool
		wantErr           string
	}{
		{"sparse azure prevResult", validConf, "IgnoreUnknown=1;K8S_POD_NAMESPACE=pets;K8S_POD_NAME=web", true, ""},
		{"no prevResult on DEL", `{"cniVersion":"1.1.0","name":"x","type":"aegis-cni"}`, "", false, ""},
		{"no prevResult on ADD", `{"cniVersion":"1.1.0","name":"x","type":"aegis-cni"}`, "", true, "must be called as a chained plugin"},
		{"missing cniVersion", `{"name":"x","type":"aegis-cni"}`, "", false, "cniVersion is missing"},
		{"too old cniVersion", `{"cniVersion":"0.2.0","name":"x","type":"aegis-cni"}`, "", false, "not supported"},
		{"not JSON", `{"cniVersion":`, "", false, "parse network configuration"},
		{"relative bpfRoot", `{"cniVersion":"1.1.0","name":"x","type":"aegis-cni","bpfRoot":"bpf"}`, "", false, "bpfRoot"},
		{"garbage CNI_ARGS", validConf, "K8S_POD_NAME", true, "CNI_ARGS"},
		{"unknown CNI_ARGS key", validConf, "FOO=bar", true, "CNI_ARGS"},
		{"bad prevResult", `{"cniVersion":"1.1.0","name":"x","type":"aegis-cni","prevResult":{"ips":"nope"}}`, "", true, "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, prev, k8s, err := parseConfig(&skel.CmdArgs{StdinData: []byte(tc.stdin), Args: tc.args}, tc.needPrev)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if conf.BPFRoot == "" || conf.Socket == "" || conf.LogFile == "" {
				t.Errorf("defaults not filled: %+v", conf)
			}
			if tc.needPrev && (prev == nil || len(prev.IPs) != 1 || string(conf.rawPrev) == "") {
				t.Errorf("prevResult not parsed: %+v", prev)
			}
			if tc.args != "" && string(k8s.K8S_POD_NAME) != "web" {
				t.Errorf("pod name = %q", k8s.K8S_POD_NAME)
			}
		})
	}
}

// FuzzParseConfig: any stdin and CNI_ARGS give a config or an error,
// never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConf), "IgnoreUnknown=1;K8S_POD_NAME=a")
	f.Add([]byte(`{"cniVersion":"1.1.0","prevResult":{"interfaces":[{}],"ips":[{"address":"x"}]}}`), "")
	f.Add([]byte(`{"cniVersion":"0.4.0","prevResult":null}`), "=;=")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		conf, _, _, err := parseConfig(&skel.CmdArgs{StdinData: stdin, Args: args}, true)
		if err == nil && (conf == nil || !strings.HasPrefix(conf.BPFRoot, "/")) {
			t.Fatalf("accepted config without an absolute bpfRoot: %+v", conf)
		}
	})
}
