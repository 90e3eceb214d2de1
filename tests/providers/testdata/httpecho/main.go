// Command httpecho is the workload of the local provider's tests: an HTTP server and its client in one static
// binary, so an image of one file can play both parts.
//
//	httpecho serve [-port 8080]
//	    GET /         "hello from <hostname>"
//	    GET /ready    200 until /unready is called, then 503 (a readiness probe to fail on demand)
//	    GET /unready  makes /ready fail from now on
//	    GET /whoami   "uid=<uid> gid=<gid>"
//	    GET /env/NAME the value of the environment variable NAME
//	    GET /auth     the claims of the request's bearer JWT (not verified), 401 without one
//	    GET /write-root  tries to create a file in / and says what happened
//	httpecho get [-attempts 1] [-interval 1s] [-timeout 2s] URL
//	    one line per attempt ("ok <status> <body>" or "error <reason>"); exits 0 when the last attempt succeeded
//	httpecho write PATH
//	    writes a line to PATH, reads it back and prints it
package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: httpecho serve|get ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "get":
		os.Exit(get(os.Args[2:]))
	case "write":
		os.Exit(write(os.Args[2:]))
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	port := fs.Int("port", 8080, "port to listen on")
	fs.Parse(args)
	var unready atomic.Bool
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if unready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/unready", func(w http.ResponseWriter, r *http.Request) {
		unready.Store(true)
		fmt.Fprintln(w, "readiness will fail")
	})
	mux.HandleFunc("/env/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, os.Getenv(strings.TrimPrefix(r.URL.Path, "/env/")))
	})
	mux.HandleFunc("/auth", func(w http.ResponseWriter, r *http.Request) {
		// The claims of a bearer JWT, unverified: enough to see which audience a caller's token was made for.
		parts := strings.Split(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), ".")
		if len(parts) != 3 {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error": "no bearer token"}`)
			return
		}
		claims, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(claims)
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "uid=%d gid=%d\n", os.Getuid(), os.Getgid())
	})
	mux.HandleFunc("/write-root", func(w http.ResponseWriter, r *http.Request) {
		err := os.WriteFile("/written-by-httpecho", []byte("x"), 0o644)
		if err != nil {
			fmt.Fprintf(w, "write failed: %v\n", err)
			return
		}
		fmt.Fprintln(w, "write succeeded")
	})
	srv := &http.Server{Addr: fmt.Sprintf(":%d", *port), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func get(args []string) int {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	attempts := fs.Int("attempts", 1, "how many requests to make")
	interval := fs.Duration("interval", time.Second, "pause between requests")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout of each request")
	fs.Parse(args)
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: httpecho get [flags] URL")
		return 2
	}
	client := &http.Client{Timeout: *timeout}
	ok := false
	for i := 0; i < *attempts; i++ {
		if i > 0 {
			time.Sleep(*interval)
		}
		resp, err := client.Get(fs.Arg(0))
		if err != nil {
			fmt.Printf("error %v\n", err)
			ok = false
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("ok %d %s\n", resp.StatusCode, strings.TrimSpace(string(body)))
		ok = resp.StatusCode == http.StatusOK
	}
	if ok {
		return 0
	}
	return 1
}

func write(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: httpecho write PATH")
		return 2
	}
	host, _ := os.Hostname()
	if err := os.WriteFile(args[0], []byte("written by "+host+"\n"), 0o644); err != nil {
		fmt.Printf("error %v\n", err)
		return 1
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Printf("error %v\n", err)
		return 1
	}
	fmt.Printf("ok %s", data)
	return 0
}
