// Command aegis is the node debug CLI: it asks aegisd through its local
// socket, and reads the pinned maps directly for `aegis bpf ...` so the
// datapath can be inspected even while the daemon is down.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/hubble"
)

const usage = `usage: aegis [--socket PATH] [--bpf-root DIR] COMMAND [-o json]

Commands:
  status                      daemon health, source, counts
  endpoint list               pods attached on this node
  identity list               numeric identities and their labels
  policy get [--identity N | --endpoint CONTAINER | --pod NS/NAME]
                              compiled policy: the rules and the map entries
  policy trace --src PEER --dst PEER [--proto TCP] --port N [--dns-name NAME]
               [--http-method M --http-path P]
                              verdict for a connection and the rule that decides it;
                              a PEER is NAMESPACE/POD, an IP address, world or host;
                              --dst may be a DNS name (the addresses learned for it);
                              --dns-name: the query, on a port the DNS proxy handles;
                              --http-method/--http-path: the request, on a port the HTTP proxy handles
  observe [--verdict V] [--namespace NS] [--pod P] [--from-pod P] [--to-pod P]
          [--from-ip IP] [--to-ip IP] [--protocol P] [--port N] [--label SEL] [--to-fqdn NAME]
          [--drop-reason-desc R] [--type drop|trace|l7] [--http-method M] [--http-path RE]
          [--http-status 4+] [--dns-query RE] [--since 5m] [--last N] [--follow] [-o compact|json]
                              flows with verdicts through the Hubble API, like hubble observe
  fqdn cache list             addresses the DNS proxy learned for toFQDNs rules, with TTL left
  fqdn cache clean [--identity N]
                              forget them, and the access they gave
  bpf endpoint list           the endpoints map, read from the pins
  bpf policy list             the policy map
  bpf ipcache list            the ipcache map
  bpf ct list                 live conntrack entries
  bpf counters                forwarded and dropped packets by reason and direction
`

type globals struct {
	socket       string
	hubbleSocket string
	bpfRoot      string
}

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "aegis:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, argv []string) error {
	g := globals{}
	fs := flag.NewFlagSet("aegis", flag.ContinueOnError)
	fs.StringVar(&g.socket, "socket", api.DefaultSocket, "aegisd's local API socket")
	fs.StringVar(&g.bpfRoot, "bpf-root", bpf.DefaultRoot, "bpffs root of the pinned maps")
	fs.StringVar(&g.hubbleSocket, "hubble-socket", hubble.DefaultSocket, "aegisd's Hubble API socket (for observe)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	if err := fs.Parse(argv); err != nil {
		return err
	}
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	if cmd == "observe" {
		// Follows run until interrupted, not for a fixed time.
		sctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		return cmdObserve(sctx, g.hubbleSocket, rest)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := api.NewClient(g.socket, 30*time.Second)
	if len(rest) > 0 && (cmd == "endpoint" || cmd == "identity" || cmd == "policy" || cmd == "bpf" || cmd == "fqdn") {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	if cmd == "fqdn cache" && len(rest) > 0 {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	if strings.HasPrefix(cmd, "bpf ") && cmd != "bpf counters" && len(rest) > 0 {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	switch cmd {
	case "status":
		return cmdStatus(ctx, client, rest)
	case "endpoint list":
		return cmdEndpoints(ctx, client, rest)
	case "identity list":
		return cmdIdentities(ctx, client, rest)
	case "policy get":
		return cmdPolicy(ctx, client, rest)
	case "policy trace":
		return cmdTrace(ctx, client, rest)
	case "fqdn cache list":
		return cmdFQDNList(ctx, client, rest)
	case "fqdn cache clean":
		return cmdFQDNClean(ctx, client, rest)
	case "bpf endpoint list", "bpf policy list", "bpf ipcache list", "bpf ct list", "bpf counters":
		return cmdBPF(g, cmd, rest)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}
