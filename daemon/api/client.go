package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ErrUnavailable says the daemon could not be reached or is not ready.
var ErrUnavailable = errors.New("aegisd unavailable")

// Client talks to aegisd over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: timeout}}
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := "http://aegisd" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s %s on %s: %v", ErrUnavailable, method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		msg := string(data)
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			return fmt.Errorf("%w: %s", ErrUnavailable, msg)
		}
		return fmt.Errorf("%s %s: %s", method, path, msg)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Status asks for the daemon's health.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", nil, nil, &s)
}

// AddEndpoint registers a pod interface; policy is in force when it returns.
func (c *Client) AddEndpoint(ctx context.Context, req EndpointRequest) (*EndpointResponse, error) {
	var r EndpointResponse
	return &r, c.do(ctx, http.MethodPut, "/v1/endpoints", nil, req, &r)
}

// DeleteEndpoint forgets a pod interface; unknown ones succeed.
func (c *Client) DeleteEndpoint(ctx context.Context, containerID, ifName string) error {
	q := url.Values{"containerID": {containerID}, "ifName": {ifName}}
	return c.do(ctx, http.MethodDelete, "/v1/endpoints", q, nil, nil)
}

// GC removes endpoints that the runtime no longer lists as valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (*GCResponse, error) {
	var r GCResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/gc", nil, req, &r)
}

// Endpoints lists the endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var r []Endpoint
	return r, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, nil, &r)
}

// Identities lists the identities.
func (c *Client) Identities(ctx context.Context) ([]Identity, error) {
	var r []Identity
	return r, c.do(ctx, http.MethodGet, "/v1/identities", nil, nil, &r)
}

// Policy returns the compiled policy of an identity, or of the identity of
// an endpoint (by container ID or pod namespace/name) when selector says so.
func (c *Client) Policy(ctx context.Context, q url.Values) ([]Policy, error) {
	var r []Policy
	return r, c.do(ctx, http.MethodGet, "/v1/policy", q, nil, &r)
}

// Trace asks how the datapath judges a connection.
func (c *Client) Trace(ctx context.Context, req TraceRequest) (*TraceResponse, error) {
	var r TraceResponse
	return &r, c.do(ctx, http.MethodPost, "/v1/trace", nil, req, &r)
}

// FQDNCache lists what the DNS proxy learned.
func (c *Client) FQDNCache(ctx context.Context) ([]FQDNEntry, error) {
	var out []FQDNEntry
	err := c.do(ctx, http.MethodGet, "/v1/fqdn/cache", nil, nil, &out)
	return out, err
}

// CleanFQDNCache forgets what the DNS proxy learned (for one identity, or
// all with 0) and the access it gave.
func (c *Client) CleanFQDNCache(ctx context.Context, identity uint32) (int, error) {
	q := url.Values{}
	if identity != 0 {
		q.Set("identity", strconv.FormatUint(uint64(identity), 10))
	}
	var out FQDNClean
	err := c.do(ctx, http.MethodDelete, "/v1/fqdn/cache", q, nil, &out)
	return out.Removed, err
}
