// Command vcsim is vigil's bundled vCenter simulator: govmomi's simulator
// package (Debian's golang-github-vmware-govmomi-dev 0.24.2) plus the pieces
// vigil's tests need that it lacks (Changed Block Tracking, see cbt.go).
//
// The first stdout line is the SDK URL; with -tls the second line is
// "thumbprint=<SHA-256 of the leaf certificate>". Both are all a client needs.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	user := flag.String("username", "user", "login user name")
	pass := flag.String("password", "pass", "login password")
	dc := flag.Int("dc", 1, "datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 3, "hosts per cluster")
	standalone := flag.Int("standalone-host", 1, "standalone hosts per datacenter")
	pool := flag.Int("pool", 1, "child resource pools per cluster")
	vm := flag.Int("vm", 2, "VMs per resource pool (and per standalone host)")
	folder := flag.Int("folder", 0, "folders to place each datacenter's inventory in")
	app := flag.Int("app", 0, "vApps per cluster")
	ds := flag.Int("ds", 1, "datastores")
	pg := flag.Int("pg", 1, "distributed port groups per datacenter")
	idle := flag.Duration("idle-timeout", 0, "session idle timeout (0: never)")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a generated self-signed certificate")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF (the parent went away)")
	lifetime := flag.Duration("max-lifetime", 0, "exit after this long (0: never)")
	cbtGrain := flag.Int("cbt-block", 64*1024, "CBT tracking granularity in bytes")
	cbtWindow := flag.Int64("cbt-window", 512<<20, "bytes covered by one QueryChangedDiskAreas answer")
	taskDelay := flag.String("task-delay", "", "METHOD=MS,...: tasks of these methods stay running for MS milliseconds")
	quiesceGlob := flag.String("quiesce-fault", "", "VM name pattern: quiesced snapshots of matching VMs fail with ApplicationQuiesceFault")
	restOnly := flag.Bool("vapi-rest-only", false, "serve the vAPI (tags) only under /rest, 404 under /api (vCenter before 7.0 U2)")
	rdmGlob := flag.String("snapshot-rdm", "", "VM name pattern: snapshots of matching VMs list a physical-mode RDM disk")
	consNeeded := flag.String("consolidation-needed", "", "VM name pattern: removing a snapshot of matching VMs leaves runtime.consolidationNeeded set")
	consFault := flag.String("consolidate-fault", "", "VM name pattern: ConsolidateVMDisks_Task on matching VMs fails with FileLocked")
	cbtRefuse := flag.String("cbt-refuse-with-snapshots", "", "VM name pattern: enabling CBT on matching VMs with snapshots silently does nothing")
	noTools := flag.String("no-tools", "", "VM name pattern: VMware Tools are not running in matching VMs, so quiesce requests are ignored")
	vssFail := flag.String("vss-fail", "", "VM name pattern: quiesced snapshots of matching Windows VMs get no VSS manifest (a VSS error)")
	denyPriv := flag.String("deny-privileges", "", "ID,...: HasPrivilegeOnEntities reports these privileges as not granted")
	toolsGlob := flag.String("tools-running", "", "VM name pattern: matching VMs report VMware Tools running")
	instUUID := flag.String("instance-uuid", "", "about.instanceUuid of this vCenter (default: govmomi's fixed one)")
	flag.Parse()
	if err := checkCBTFlags(*cbtGrain, *cbtWindow); err != nil {
		fail("%v", err)
	}

	model := simulator.VPX()
	model.Datacenter = *dc
	model.Cluster = *cluster
	model.ClusterHost = *host
	model.Host = *standalone
	model.Pool = *pool
	model.Machine = *vm
	model.Folder = *folder
	model.App = *app
	model.Datastore = *ds
	model.Portgroup = *pg
	simulator.SessionIdleTimeout = *idle
	if *instUUID != "" {
		// Every real vCenter has its own instance uuid; govmomi's model has one fixed
		// value, so two simulators would look like one vCenter (docs/vcsim.md).
		model.ServiceContent.About.InstanceUuid = *instUUID
	}

	if err := model.Create(); err != nil {
		fail("creating model: %v", err)
	}
	cleanup := func() { model.Remove() }
	fixDatastoreMounts()
	setToolsRunning(*toolsGlob)

	model.Service.RegisterEndpoints = true
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	var thumb string
	if *useTLS {
		cfg, fp, err := selfSignedTLS()
		if err != nil {
			cleanup()
			fail("generating certificate: %v", err)
		}
		model.Service.TLS = cfg
		thumb = fp
	}

	srv := model.Service.NewServer()
	// The CBT layer sits in front of the simulator's mux and answers the
	// methods it intercepts; everything else passes through untouched.
	srv.Server.Config.Handler = newCBT(srv.Server.Config.Handler, *cbtGrain, *cbtWindow)
	srv.Server.Config.Handler = newVSSManifest(srv.Server.Config.Handler, *vssFail, *noTools)
	srv.Server.Config.Handler = newUpkeep(srv.Server.Config.Handler, *consNeeded, *consFault, *cbtRefuse)
	srv.Server.Config.Handler = newSlowTasks(srv.Server.Config.Handler, *taskDelay)
	srv.Server.Config.Handler = newQuiesceFault(srv.Server.Config.Handler, *quiesceGlob)
	srv.Server.Config.Handler = newSnapshotRDM(srv.Server.Config.Handler, *rdmGlob)
	srv.Server.Config.Handler = newInPlaceMoves(srv.Server.Config.Handler)
	srv.Server.Config.Handler = newVappConfig(srv.Server.Config.Handler)
	srv.Server.Config.Handler = newPoolViews(srv.Server.Config.Handler)
	srv.Server.Config.Handler = newVapiAPI(srv.Server.Config.Handler, *restOnly)
	srv.Server.Config.Handler = newTemplateSnapshot(srv.Server.Config.Handler)
	srv.Server.Config.Handler = newPrivilegeDenial(srv.Server.Config.Handler, *denyPriv)

	u := *srv.URL
	u.User = nil
	fmt.Println(u.String())
	if thumb != "" {
		fmt.Println("thumbprint=" + thumb)
	}
	os.Stdout.Sync()

	done := make(chan string, 3)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { s := <-sig; done <- s.String() }()
	if *stdinEOF {
		go func() {
			r := bufio.NewReader(os.Stdin)
			for {
				if _, err := r.ReadByte(); err != nil {
					done <- "stdin closed"
					return
				}
			}
		}()
	}
	if *lifetime > 0 {
		go func() { time.Sleep(*lifetime); done <- "max lifetime" }()
	}
	why := <-done
	fmt.Fprintf(os.Stderr, "vcsim: stopping (%s)\n", why)
	// Close waits for outstanding requests, and a long-poll WaitForUpdatesEx of a client
	// that died keeps one open for up to its maxWaitSeconds: give it a moment, no more.
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(time.Second):
	}
	cleanup()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(1)
}

func selfSignedTLS() (*tls.Config, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim.local", Organization: []string{"vigil vcsim"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost", "vcsim.local"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		strings.Join(parts, ":"), nil
}

var _ http.Handler = (*cbt)(nil)
