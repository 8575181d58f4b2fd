package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Sentinels a Backend wraps so the server answers with the right status.
var (
	ErrNotReady   = errors.New("not ready")
	ErrBadRequest = errors.New("bad request")
	ErrNotFound   = errors.New("not found")
)

// Backend is what the API serves; the agent implements it.
type Backend interface {
	Status() Status
	AddEndpoint(ctx context.Context, req EndpointRequest) (*EndpointResponse, error)
	DeleteEndpoint(ctx context.Context, containerID, ifName string) error
	GC(ctx context.Context, req GCRequest) (*GCResponse, error)
	Endpoints() []Endpoint
	Identities() []Identity
	Policy(q url.Values) ([]Policy, error)
	Trace(req TraceRequest) (*TraceResponse, error)
	FQDNCache() ([]FQDNEntry, error)
	CleanFQDNCache(identity uint32) (int, error)
}

// ListenRootOnly listens on a unix socket only root may use: 0600 in a
// 0700 directory. Every local API of aegisd listens this way.
func ListenRootOnly(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	// A socket left by a killed daemon would make Listen fail.
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", socket, err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", socket, err)
	}
	return ln, nil
}

// Serve listens on the root-only unix socket and serves until ctx ends.
func Serve(ctx context.Context, socket string, b Backend, log *slog.Logger) error {
	ln, err := ListenRootOnly(socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: Handler(b, log), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", socket, err)
	}
	return nil
}

// Handler routes the API.
func Handler(b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, b.Status(), nil)
	})
	mux.HandleFunc("PUT /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req EndpointRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		resp, err := b.AddEndpoint(r.Context(), req)
		if err != nil {
			log.Warn("endpoint add failed", "container", req.ContainerID, "pod", req.PodNamespace+"/"+req.PodName, "err", err)
		}
		reply(w, resp, err)
	})
	mux.HandleFunc("DELETE /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		err := b.DeleteEndpoint(r.Context(), q.Get("containerID"), q.Get("ifName"))
		reply(w, struct{}{}, err)
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		resp, err := b.GC(r.Context(), req)
		reply(w, resp, err)
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, b.Endpoints(), nil)
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		reply(w, b.Identities(), nil)
	})
	mux.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		p, err := b.Policy(r.URL.Query())
		reply(w, p, err)
	})
	mux.HandleFunc("POST /v1/trace", func(w http.ResponseWriter, r *http.Request) {
		var req TraceRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		resp, err := b.Trace(req)
		reply(w, resp, err)
	})
	mux.HandleFunc("GET /v1/fqdn/cache", func(w http.ResponseWriter, r *http.Request) {
		l, err := b.FQDNCache()
		reply(w, l, err)
	})
	mux.HandleFunc("DELETE /v1/fqdn/cache", func(w http.ResponseWriter, r *http.Request) {
		var id uint64
		if s := r.URL.Query().Get("identity"); s != "" {
			var err error
			if id, err = strconv.ParseUint(s, 10, 32); err != nil {
				reply(w, nil, fmt.Errorf("%w: identity %q", ErrBadRequest, s))
				return
			}
		}
		n, err := b.CleanFQDNCache(uint32(id))
		reply(w, FQDNClean{Removed: n}, err)
	})
	return mux
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: decode body: %v", ErrBadRequest, err)
	}
	return nil
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNotReady):
			code = http.StatusServiceUnavailable
		case errors.Is(err, ErrBadRequest):
			code = http.StatusBadRequest
		case errors.Is(err, ErrNotFound):
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(Error{Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
