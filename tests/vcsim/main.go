// Command vcsim serves govmomi's vCenter simulator (VPX model) for the
// reporter's tests and demo. It is built in GOPATH mode against Debian's
// golang-github-vmware-govmomi-dev (see scripts/build-vcsim.sh).
//
// Once serving it prints exactly one line, `VCSIM_URL=<scheme>://<host:port>`
// (the SOAP endpoint is that URL plus /sdk), then runs until SIGINT/SIGTERM.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
)

// sessionSpecs collects the repeatable -session USER,AGENT,COUNT flag.
type sessionSpecs []string

func (s *sessionSpecs) String() string     { return strings.Join(*s, " ") }
func (s *sessionSpecs) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("tls-cert", "", "serve HTTPS with this PEM certificate (needs -tls-key)")
	keyFile := flag.String("tls-key", "", "PEM private key of -tls-cert")
	idle := flag.Duration("idle-timeout", 0, "expire sessions idle for this long (0: never)")
	var sessions sessionSpecs
	flag.Var(&sessions, "session", "USER,AGENT,COUNT: log in COUNT times as USER with that User-Agent (repeatable)")
	flag.Parse()

	simulator.SessionIdleTimeout = *idle
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("create model: %s", err)
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *certFile != "" || *keyFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatalf("load -tls-cert/-tls-key: %s", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	server := model.Service.NewServer()

	// Log the requested sessions in over real HTTP so vcsim records their
	// User-Agent and address like any client's.
	sdk := *server.URL
	sdk.User = nil
	for _, spec := range sessions {
		// USER is up to the first comma and COUNT after the last, so an
		// AGENT may hold commas.
		first, last := strings.Index(spec, ","), strings.LastIndex(spec, ",")
		if first < 0 || first == last {
			log.Fatalf("-session %q: want USER,AGENT,COUNT", spec)
		}
		user, agent := spec[:first], spec[first+1:last]
		count, err := strconv.Atoi(spec[last+1:])
		if err != nil || count < 0 {
			log.Fatalf("-session %q: COUNT must be a number >= 0", spec)
		}
		for i := 0; i < count; i++ {
			sc := soap.NewClient(&sdk, true)
			sc.UserAgent = agent
			c, err := vim25.NewClient(context.Background(), sc)
			if err == nil {
				err = session.NewManager(c).Login(context.Background(), url.UserPassword(user, "vcsim-pass"))
			}
			if err != nil {
				log.Fatalf("-session %q: login: %s", spec, err)
			}
		}
	}

	base := url.URL{Scheme: server.URL.Scheme, Host: server.URL.Host}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "VCSIM_URL=%s\n", base.String())
	_ = out.Flush()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Close()
}
