package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

func cmdAdd(args *skel.CmdArgs) error {
	res, err := add(args)
	if err != nil {
		return err
	}
	return res.Print()
}

// add is ADD up to the printing of the result, which is in the version
// the configuration asked for.
func add(args *skel.CmdArgs) (types.Result, error) {
	var res types.Result
	err := withStore(args, func(c *config, s *disk.Store) error {
		ipc, err := allocate(s, c, args.ContainerID, args.IfName)
		if errors.Is(err, errExhausted) {
			return types.NewError(types.ErrTryAgainLater, err.Error(), "")
		}
		if err != nil {
			return err
		}
		r := &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: []*current.IPConfig{ipc}, Routes: c.routes}
		if res, err = r.GetAsVersion(c.cniVersion); err != nil {
			return fmt.Errorf("convert result to %s: %w", c.cniVersion, err)
		}
		return nil
	})
	return res, err
}

// cmdDel releases the attachment's address. Nothing to release, a second
// DEL included, is success.
func cmdDel(args *skel.CmdArgs) error {
	return withStore(args, func(_ *config, s *disk.Store) error {
		return release(s, args.ContainerID, args.IfName)
	})
}

// cmdCheck verifies that the attachment still holds an address in the
// range and, when the runtime passes the ADD result, that it is the one
// the result names.
func cmdCheck(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		ip, err := lookup(s, c, args.ContainerID, args.IfName)
		if err != nil {
			return err
		}
		if ip == nil {
			return fmt.Errorf("check %s/%s: no address reserved in %s", args.ContainerID, args.IfName, c.rng.String())
		}
		if c.prevResult == nil {
			return nil
		}
		for _, ipc := range c.prevResult.IPs {
			if ipc.Address.IP.Equal(ip) {
				return nil
			}
		}
		return fmt.Errorf("check %s/%s: reserved address %s is not in prevResult", args.ContainerID, args.IfName, ip)
	})
}

// cmdGC releases every reservation whose attachment is not among
// cni.dev/valid-attachments.
func cmdGC(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		return collect(s, c)
	})
}

// cmdStatus says whether an ADD could succeed now: the pod CIDR is known
// and the data directory takes writes. Either failing is "plugin not
// available" (50), which the runtime reports as the network not ready.
func cmdStatus(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if errors.Is(err, errNoPodCIDR) {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if err != nil {
		return configError(err)
	}
	if err := probe(c); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	return nil
}

// withStore parses the configuration and opens the allocation store for
// one command.
func withStore(args *skel.CmdArgs, fn func(*config, *disk.Store) error) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return configError(err)
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(c, s)
}

// configError gives a parseConfig error the CNI code a runtime can act
// on; the message names the field.
func configError(err error) *types.Error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	code := types.ErrInvalidNetworkConfig
	switch {
	case errors.Is(err, errNoPodCIDR):
		code = types.ErrTryAgainLater
	case errors.Is(err, errVersion):
		code = types.ErrIncompatibleCNIVersion
	case errors.As(err, &syntax), errors.As(err, &typ):
		code = types.ErrDecodingFailure
	}
	return types.NewError(code, err.Error(), "")
}
