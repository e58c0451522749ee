// Command artifact-store serves an in-memory S3-compatible object store over TLS on one
// address, with its buckets made at start. The test bed runs one for all its clusters, so that
// an artifact a step writes in one cluster is read by a step in another, as with a real bucket.
//
// It is a test fixture: gofakes3 checks no request signature, so any access key is accepted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	bind := flag.String("bind-address", "127.0.0.1:0", "address to listen on (a loopback address)")
	cert := flag.String("tls-cert-file", "", "serving certificate (PEM)")
	key := flag.String("tls-private-key-file", "", "serving certificate's key (PEM)")
	buckets := flag.String("buckets", "", "comma-separated buckets to make at start")
	addressFile := flag.String("address-file", "", "written with the address listened on, once serving")
	flag.Parse()
	if err := run(*bind, *cert, *key, *buckets, *addressFile); err != nil {
		log.Fatalf("artifact-store: %v", err)
	}
}

func run(bind, cert, key, buckets, addressFile string) error {
	if cert == "" || key == "" {
		return errors.New("--tls-cert-file and --tls-private-key-file are required")
	}
	host, _, err := net.SplitHostPort(bind)
	if err != nil {
		return fmt.Errorf("--bind-address %q: %w", bind, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--bind-address must be a loopback address, not %q", host)
	}
	backend := s3mem.New()
	for _, bucket := range strings.Split(buckets, ",") {
		if bucket = strings.TrimSpace(bucket); bucket != "" {
			if err := backend.CreateBucket(bucket); err != nil {
				return fmt.Errorf("cannot make bucket %q: %w", bucket, err)
			}
		}
	}
	listener, err := net.Listen("tcp", bind)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           gofakes3.New(backend).Server(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- server.ServeTLS(listener, cert, key) }()
	if addressFile != "" {
		if err := os.WriteFile(addressFile, []byte(listener.Addr().String()+"\n"), 0o644); err != nil {
			return err
		}
	}
	log.Printf("artifact-store: serving on https://%s (buckets: %s)", listener.Addr(), buckets)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-served:
		return err
	case <-stop:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return server.Shutdown(ctx)
	}
}
