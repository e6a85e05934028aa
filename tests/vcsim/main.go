// Command vcsim serves govmomi's vCenter simulator (VPX model) for the
// reporter's tests and demo. It is built in GOPATH mode against Debian's
// golang-github-vmware-govmomi-dev (see scripts/build-vcsim.sh).
//
// Once serving it prints exactly one line, `VCSIM_URL=<scheme>://<host:port>`
// (the SOAP endpoint is that URL plus /sdk), then runs until SIGINT/SIGTERM,
// when it deletes the model's datastore directories under $TMPDIR and exits
// at once, even with requests in flight.
//
// Seeding flags (all repeatable ones may be given any number of times):
//
//	-session USER,AGENT,COUNT        COUNT logins as USER with User-Agent AGENT
//	-session-from IP,USER,AGENT,COUNT  the same, made from source address IP
//	                                 (an IPv4 127.0.0.0/8 address); vcsim
//	                                 records IP as the session's ipAddress
//	-vm NAME[,IP...]                 a powered-on VM named NAME whose guest
//	                                 reports those IPs (guest.ipAddress = the
//	                                 first; guest.net = one NIC per IP)
//	-vm-count N                      N more VMs named bulk-vm-00000 ... with
//	                                 guest IP 10.x.y.z = index+1 in base 256
//	                                 (bulk-vm-00000 is 10.0.0.1, bulk-vm-00255
//	                                 10.0.1.0)
//
// USER ends at its first comma and COUNT starts after the last one, so an
// AGENT may hold commas. The model has four VMs (DC0_C0_RP0_VM0,
// DC0_C0_RP0_VM1, DC0_H0_VM0, DC0_H0_VM1; powered on, one NIC, no guest IP).
// A -vm naming one of them only sets its IPs; the other -vm flags rename the
// remaining model VMs in name order, then create VMs; bulk VMs are created.
//
// Control API, on the same listener, for tests to change VMs while vcsim runs.
// Parameters are query (or form) values; changes are POSTs; answers are one
// line of plain text: 200 (201 for add) on success, 400 bad input, 404 no such
// VM, 405 wrong method, 409 name taken, 500 the simulator refused.
//
//	POST /vcsim-test/vm/add?name=NAME[&ip=IP...]        create a powered-on VM
//	POST /vcsim-test/vm/rename?name=OLD&new=NEW         Rename_Task
//	POST /vcsim-test/vm/remove?name=NAME                PowerOff + Destroy_Task
//	POST /vcsim-test/vm/set-ips?name=NAME[&ip=IP...]    replace the guest IPs
//	                                                    (none: clear them)
//	GET  /vcsim-test/vm/list                            NAME<TAB>MOREF<TAB>IP,IP per line
//	POST /vcsim-test/session/refuse-terminate?key=KEY   TerminateSession of KEY
//	                                                    answers a NoPermission
//	                                                    fault from now on
//	POST /vcsim-test/session/end-first?key=KEY          the next TerminateSession
//	                                                    of KEY finds it already
//	                                                    ended by another caller
//	                                                    (vcsim's own NotFound)
//
// Every change goes through the simulator's own paths (tasks run through its
// in-process SOAP client, guest changes through Registry.Update under the
// VM's lock), so PropertyCollector filters and WaitForUpdatesEx report it
// like any other update.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// specs collects a repeatable string flag.
type specs []string

func (s *specs) String() string     { return strings.Join(*s, " ") }
func (s *specs) Set(v string) error { *s = append(*s, v); return nil }

// maxBulk keeps bulk names at five digits, so they sort in creation order.
const maxBulk = 99999

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("tls-cert", "", "serve HTTPS with this PEM certificate (needs -tls-key)")
	keyFile := flag.String("tls-key", "", "PEM private key of -tls-cert")
	idle := flag.Duration("idle-timeout", 0, "expire sessions idle for this long (0: never)")
	var sessions, sessionsFrom, vms specs
	flag.Var(&sessions, "session", "USER,AGENT,COUNT: log in COUNT times as USER with that User-Agent (repeatable)")
	flag.Var(&sessionsFrom, "session-from", "IP,USER,AGENT,COUNT: like -session, from source address IP in 127.0.0.0/8 (repeatable)")
	flag.Var(&vms, "vm", "NAME[,IP...]: a powered-on VM whose guest reports those IPs (repeatable)")
	vmCount := flag.Int("vm-count", 0, "also create N VMs bulk-vm-00000... with one guest IP each (10.x.y.z = index+1)")
	flag.Parse()

	// Parse every flag before building anything, so a typo fails fast.
	var logins []loginSpec
	for _, spec := range sessions {
		l, err := parseLogin(spec)
		if err != nil {
			log.Fatalf("-session %q: %s", spec, err)
		}
		logins = append(logins, l)
	}
	for _, spec := range sessionsFrom {
		comma := strings.Index(spec, ",")
		if comma < 0 {
			log.Fatalf("-session-from %q: want IP,USER,AGENT,COUNT", spec)
		}
		ip, err := parseSourceIP(spec[:comma])
		if err != nil {
			log.Fatalf("-session-from %q: %s", spec, err)
		}
		l, err := parseLogin(spec[comma+1:])
		if err != nil {
			log.Fatalf("-session-from %q: %s", spec, err)
		}
		l.from = ip
		logins = append(logins, l)
	}
	var seeds []vmSpec
	seen := map[string]bool{}
	for _, spec := range vms {
		parts := strings.Split(spec, ",")
		v := vmSpec{name: parts[0]}
		if v.name == "" {
			log.Fatalf("-vm %q: want NAME[,IP...]", spec)
		}
		if seen[v.name] {
			log.Fatalf("-vm %q: VM name given twice", spec)
		}
		seen[v.name] = true
		ips, err := parseIPs(parts[1:])
		if err != nil {
			log.Fatalf("-vm %q: %s", spec, err)
		}
		v.ips = ips
		seeds = append(seeds, v)
	}
	if *vmCount < 0 || *vmCount > maxBulk {
		log.Fatalf("-vm-count %d: want 0..%d", *vmCount, maxBulk)
	}
	for _, v := range seeds {
		// vcsim's CreateVM_Task does not refuse a duplicate name.
		var i int
		if n, err := fmt.Sscanf(v.name, "bulk-vm-%05d", &i); n == 1 && err == nil && bulkSpec(i).name == v.name && i < *vmCount {
			log.Fatalf("-vm %s: name taken by -vm-count", v.name)
		}
	}

	simulator.SessionIdleTimeout = *idle
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("create model: %s", err)
	}
	// From here the model has datastore directories under $TMPDIR.
	fatalf := func(format string, args ...interface{}) {
		removeDatastores()
		log.Fatalf(format, args...)
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *certFile != "" || *keyFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fatalf("load -tls-cert/-tls-key: %s", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}

	inv, err := newInventory(model.Service)
	if err != nil {
		fatalf("inventory: %s", err)
	}
	started := time.Now()
	if err := inv.seed(seeds, *vmCount); err != nil {
		fatalf("seed VMs: %s", err)
	}
	if len(seeds)+*vmCount > 0 {
		log.Printf("vcsim: seeded %d -vm and %d bulk VMs in %s", len(seeds), *vmCount, time.Since(started).Round(time.Millisecond))
	}

	// Registered before NewServer, which adds Service.HandleFunc routes last.
	model.Service.HandleFunc(controlPrefix, inv.serveControl)
	server := model.Service.NewServer()
	// SOAP calls to the listening host go through the refusal filter
	// first: a host pattern wins over the plain /sdk route, and ServeMux
	// takes new routes while it serves.
	host, _, err := net.SplitHostPort(server.URL.Host)
	if err != nil {
		fatalf("listen address %q: %s", server.URL.Host, err)
	}
	model.Service.ServeMux.HandleFunc(host+"/sdk", inv.refusals.filter(model.Service))

	// Log the requested sessions in over real HTTP so vcsim records their
	// User-Agent and address like any client's.
	sdk := *server.URL
	sdk.User = nil
	for _, l := range logins {
		for i := 0; i < l.count; i++ {
			if err := l.login(&sdk); err != nil {
				fatalf("%s: login: %s", l.flag, err)
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
	// No server.Close: it waits for outstanding requests, and a client's
	// WaitForUpdatesEx long poll may hold one for minutes.
	removeDatastores()
	os.Exit(0)
}

// removeDatastores deletes the model's datastores, directories under
// $TMPDIR holding a folder per VM: without this every run with -vm-count
// would leave thousands behind. Model.Remove does the same but walks the
// registry without its lock, which could race a request still running.
func removeDatastores() {
	tmp := filepath.Clean(os.TempDir()) + string(filepath.Separator)
	for _, e := range simulator.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok {
			continue
		}
		var dir string
		simulator.Map.WithLock(ds, func() { dir = ds.Info.GetDatastoreInfo().Url })
		// Only what Model.Create made, whatever else a client configured.
		if strings.HasPrefix(dir, tmp+"govcsim-") {
			_ = os.RemoveAll(dir)
		}
	}
}

// loginSpec is one -session or -session-from flag.
type loginSpec struct {
	flag        string
	from        net.IP // nil: the default source address
	user, agent string
	count       int
}

// parseLogin reads USER,AGENT,COUNT; USER is up to the first comma and COUNT
// after the last, so an AGENT may hold commas.
func parseLogin(spec string) (loginSpec, error) {
	first, last := strings.Index(spec, ","), strings.LastIndex(spec, ",")
	if first < 0 || first == last {
		return loginSpec{}, errors.New("want USER,AGENT,COUNT")
	}
	count, err := strconv.Atoi(spec[last+1:])
	if err != nil || count < 0 {
		return loginSpec{}, errors.New("COUNT must be a number >= 0")
	}
	return loginSpec{flag: spec, user: spec[:first], agent: spec[first+1 : last], count: count}, nil
}

// parseSourceIP accepts IPv4 loopback addresses only: Linux lets a socket
// bind any of 127.0.0.0/8 without configuration, and vcsim 0.24 derives the
// session's ipAddress by cutting RemoteAddr at its first ':', which would
// mangle an IPv6 address.
func parseSourceIP(s string) (net.IP, error) {
	ip := net.ParseIP(s).To4()
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("IP %q: want an IPv4 address in 127.0.0.0/8", s)
	}
	return ip, nil
}

func parseIPs(list []string) ([]string, error) {
	ips := make([]string, 0, len(list))
	for _, s := range list {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("%q is not an IP address", s)
		}
		ips = append(ips, ip.String())
	}
	return ips, nil
}

// login opens one session over HTTP, from l.from when set.
func (l loginSpec) login(sdk *url.URL) error {
	sc := soap.NewClient(sdk, true)
	sc.UserAgent = l.agent
	if l.from != nil {
		// With insecure=true soap.Client leaves DialTLS unset, so this
		// dialer carries HTTPS connections too.
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: l.from}, Timeout: 10 * time.Second}
		sc.DefaultTransport().DialContext = dialer.DialContext
	}
	// A parked keep-alive connection per session costs two descriptors in
	// this one process; thousands of sessions would approach the fd limit.
	defer sc.CloseIdleConnections()
	ctx := context.Background()
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return err
	}
	return session.NewManager(c).Login(ctx, url.UserPassword(l.user, "vcsim-pass"))
}

// vmSpec is one VM to seed.
type vmSpec struct {
	name string
	ips  []string
}

// bulkSpec is bulk VM i: its guest IP is i+1 written in base 256 under 10/8,
// so no bulk VM has a network (.0.0.0) address at index 0.
func bulkSpec(i int) vmSpec {
	n := i + 1
	return vmSpec{
		name: fmt.Sprintf("bulk-vm-%05d", i),
		ips:  []string{fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)},
	}
}

// inventory changes VMs through the simulator's in-process SOAP client
// (simulator.Service implements soap.RoundTripper), the same path
// Model.Create uses, so every change is a real task with its updates.
type inventory struct {
	client *vim25.Client
	folder *object.Folder       // where new VMs go: the model's VM folder
	pool   *object.ResourcePool // and their pool (a cluster: vcsim picks the host)
	// mu makes each control request's name check and change one step.
	mu sync.Mutex
	// refusals are the session keys whose termination vcsim refuses, and
	// those another caller ends first.
	refusals refusals
}

// refusals holds session keys whose TerminateSession is refused, to test
// a vCenter that will not end one session among many, and keys that are
// ended a moment before our TerminateSession arrives, to test the race
// with another operator (or the client logging out) that a real vCenter
// answers with NotFound.
type refusals struct {
	mu    sync.Mutex
	keys  map[string]bool
	first map[string]bool
}

func (rf *refusals) add(key string) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.keys == nil {
		rf.keys = map[string]bool{}
	}
	rf.keys[key] = true
}

func (rf *refusals) endFirst(key string) {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.first == nil {
		rf.first = map[string]bool{}
	}
	rf.first[key] = true
}

// terminates returns the key of keys that body is a TerminateSession of.
func terminates(body []byte, keys map[string]bool) (string, bool) {
	if !bytes.Contains(body, []byte("<TerminateSession")) {
		return "", false
	}
	for key := range keys {
		if bytes.Contains(body, []byte("<sessionId>"+key+"</sessionId>")) {
			return key, true
		}
	}
	return "", false
}

// refused reports whether body is a TerminateSession of a refused key.
func (rf *refusals) refused(body []byte) bool {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	_, ok := terminates(body, rf.keys)
	return ok
}

// takeEndFirst reports whether body is a TerminateSession of a key to end
// first, and forgets the key: the race happens once.
func (rf *refusals) takeEndFirst(body []byte) bool {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	key, ok := terminates(body, rf.first)
	if ok {
		delete(rf.first, key)
	}
	return ok
}

// noPermission is the fault vCenter sends when the caller may not end a
// session (HTTP 500, as for every SOAP fault).
const noPermission = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Permission to perform this operation was denied.</faultstring><detail><NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><object type="SessionManager">SessionManager</object><privilegeId>Sessions.TerminateSession</privilegeId></NoPermissionFault></detail></soapenv:Fault></soapenv:Body>
</soapenv:Envelope>`

// filter answers refused terminations with the fault and hands every
// other call to the simulator unchanged.
func (rf *refusals) filter(svc *simulator.Service) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if rf.refused(body) {
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, noPermission)
			return
		}
		if rf.takeEndFirst(body) {
			// The same call, a moment earlier, answered to nobody: the
			// session is gone when the real one arrives.
			early := r.Clone(r.Context())
			early.Body = io.NopCloser(bytes.NewReader(body))
			svc.ServeSDK(httptest.NewRecorder(), early)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		svc.ServeSDK(w, r)
	}
}

func newInventory(svc *simulator.Service) (*inventory, error) {
	client, err := vim25.NewClient(context.Background(), svc)
	if err != nil {
		return nil, err
	}
	models := allVMs()
	if len(models) == 0 {
		return nil, errors.New("the model has no VM to take a folder and pool from")
	}
	// The first by name is DC0_C0_RP0_VM0, in the cluster's pool.
	first := models[0]
	var folder, pool types.ManagedObjectReference
	simulator.Map.WithLock(first, func() {
		folder = *first.Parent
		pool = *first.ResourcePool
	})
	return &inventory{
		client: client,
		folder: object.NewFolder(client, folder),
		pool:   object.NewResourcePool(client, pool),
	}, nil
}

// allVMs lists every VM, sorted by name.
func allVMs() []*simulator.VirtualMachine {
	var vms []*simulator.VirtualMachine
	names := map[*simulator.VirtualMachine]string{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() { names[vm] = vm.Name })
		vms = append(vms, vm)
	}
	sort.Slice(vms, func(i, j int) bool { return names[vms[i]] < names[vms[j]] })
	return vms
}

// seed renames model VMs for the first specs, creates the rest and the bulk
// VMs, and sets every one's guest IPs.
func (inv *inventory) seed(specs []vmSpec, bulk int) error {
	ctx := context.Background()
	// A spec naming a model VM keeps that VM; the others take the remaining
	// model VMs in name order, so no rename can collide with a model name.
	var spare []*simulator.VirtualMachine
	taken := map[string]bool{}
	for _, spec := range specs {
		taken[spec.name] = true
	}
	for _, vm := range allVMs() {
		if name, _, _ := describe(vm); taken[name] {
			continue
		}
		spare = append(spare, vm)
	}
	for _, spec := range specs {
		if vm := byName(spec.name); vm != nil {
			setGuestIPs(vm, spec.ips)
			continue
		}
		if len(spare) > 0 {
			vm := spare[0]
			spare = spare[1:]
			if err := inv.rename(ctx, vm, spec.name); err != nil {
				return fmt.Errorf("rename %s to %s: %w", vm.Self.Value, spec.name, err)
			}
			setGuestIPs(vm, spec.ips)
			continue
		}
		if _, err := inv.add(ctx, spec); err != nil {
			return fmt.Errorf("create %s: %w", spec.name, err)
		}
	}
	for i := 0; i < bulk; i++ {
		spec := bulkSpec(i)
		if _, err := inv.add(ctx, spec); err != nil {
			return fmt.Errorf("create %s: %w", spec.name, err)
		}
	}
	return nil
}

// add creates a powered-on VM with one NIC, like the model's VMs but
// without disks (nothing here reads them), then sets its guest IPs.
func (inv *inventory) add(ctx context.Context, spec vmSpec) (*simulator.VirtualMachine, error) {
	nic := esx.EthernetCard
	devices, err := object.VirtualDeviceList{&nic}.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, err
	}
	config := types.VirtualMachineConfigSpec{
		Name:         spec.name,
		GuestId:      string(types.VirtualMachineGuestOsIdentifierOtherGuest64),
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[LocalDS_0]"},
		DeviceChange: devices,
	}
	task, err := inv.folder.CreateVM(ctx, config, inv.pool, nil)
	if err != nil {
		return nil, err
	}
	result, err := taskResult(task)
	if err != nil {
		return nil, err
	}
	ref, ok := result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("CreateVM_Task returned %T", result)
	}
	task, err = object.NewVirtualMachine(inv.client, ref).PowerOn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := taskResult(task); err != nil {
		return nil, fmt.Errorf("power on: %w", err)
	}
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return nil, fmt.Errorf("created VM %s is not in the registry", ref.Value)
	}
	setGuestIPs(vm, spec.ips)
	return vm, nil
}

func (inv *inventory) rename(ctx context.Context, vm *simulator.VirtualMachine, name string) error {
	task, err := object.NewVirtualMachine(inv.client, vm.Self).Rename(ctx, name)
	if err != nil {
		return err
	}
	_, err = taskResult(task)
	return err
}

// remove powers the VM off (vcsim refuses to destroy a running VM) and
// destroys it.
func (inv *inventory) remove(ctx context.Context, vm *simulator.VirtualMachine) error {
	obj := object.NewVirtualMachine(inv.client, vm.Self)
	var state types.VirtualMachinePowerState
	simulator.Map.WithLock(vm, func() { state = vm.Runtime.PowerState })
	if state != types.VirtualMachinePowerStatePoweredOff {
		task, err := obj.PowerOff(ctx)
		if err != nil {
			return err
		}
		if _, err := taskResult(task); err != nil {
			return fmt.Errorf("power off: %w", err)
		}
	}
	task, err := obj.Destroy(ctx)
	if err != nil {
		return err
	}
	_, err = taskResult(task)
	return err
}

// taskResult reads a finished task's outcome from the registry: in-process
// tasks run to completion inside the call, so waiting through a property
// collector (object.Task.Wait) would only add a collector per task.
func taskResult(task *object.Task) (types.AnyType, error) {
	t, ok := simulator.Map.Get(task.Reference()).(*simulator.Task)
	if !ok {
		return nil, fmt.Errorf("task %s is not in the registry", task.Reference().Value)
	}
	var info types.TaskInfo
	simulator.Map.WithLock(t, func() { info = t.Info })
	switch info.State {
	case types.TaskInfoStateSuccess:
		return info.Result, nil
	case types.TaskInfoStateError:
		if info.Error != nil && info.Error.Fault != nil {
			return nil, fmt.Errorf("%s failed: %T", info.Name, info.Error.Fault)
		}
		return nil, fmt.Errorf("%s failed", info.Name)
	default:
		return nil, fmt.Errorf("%s still %s", info.Name, info.State)
	}
}

// setGuestIPs makes the guest report ips: guest.ipAddress (and its summary
// copy) is the first, guest.net one NIC per IP. The VM's device NICs keep
// their MAC, network and device key; NICs beyond them are guest-only
// (deviceConfigId -1, as vCenter reports for NICs it has no device for).
// Registry.Update applies the change and queues it for every property
// collector; the VM's lock keeps SOAP readers from seeing half of it.
func setGuestIPs(vm *simulator.VirtualMachine, ips []string) {
	simulator.Map.WithLock(vm, func() {
		var nets []types.GuestNicInfo
		network := "VM Network"
		if vm.Guest != nil {
			for _, nic := range vm.Guest.Net {
				if nic.DeviceConfigId < 0 {
					continue // guest-only NIC from an earlier call
				}
				nic.IpAddress = nil
				nic.IpConfig = nil
				nets = append(nets, nic)
			}
		}
		if len(nets) > 0 && nets[0].Network != "" {
			network = nets[0].Network
		}
		for i, ip := range ips {
			if i == len(nets) {
				nets = append(nets, types.GuestNicInfo{Network: network, Connected: true, DeviceConfigId: -1})
			}
			nets[i].IpAddress = []string{ip}
		}
		first := ""
		if len(ips) > 0 {
			first = ips[0]
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.ipAddress", Val: first},
			{Name: "guest.net", Val: nets},
			{Name: "summary.guest.ipAddress", Val: first},
		})
	})
}

// describe reads a VM's name, moref and guest IPs (deduplicated).
func describe(vm *simulator.VirtualMachine) (name, ref string, ips []string) {
	simulator.Map.WithLock(vm, func() {
		name, ref = vm.Name, vm.Self.Value
		if vm.Guest == nil {
			return
		}
		seen := map[string]bool{}
		add := func(ip string) {
			if ip != "" && !seen[ip] {
				seen[ip] = true
				ips = append(ips, ip)
			}
		}
		add(vm.Guest.IpAddress)
		for _, nic := range vm.Guest.Net {
			for _, ip := range nic.IpAddress {
				add(ip)
			}
		}
	})
	return name, ref, ips
}

// byName finds the VM named name (nil when none).
func byName(name string) *simulator.VirtualMachine {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		var n string
		simulator.Map.WithLock(vm, func() { n = vm.Name })
		if n == name {
			return vm
		}
	}
	return nil
}

const controlPrefix = "/vcsim-test/"

// httpError is a control API failure with its status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func fail(status int, format string, args ...interface{}) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

func (inv *inventory) serveControl(w http.ResponseWriter, r *http.Request) {
	status, msg := http.StatusOK, ""
	err := func() error {
		op := strings.TrimPrefix(r.URL.Path, controlPrefix)
		if op == "session/refuse-terminate" || op == "session/end-first" {
			if r.Method != http.MethodPost {
				return fail(http.StatusMethodNotAllowed, "%s wants POST", r.URL.Path)
			}
			key := r.FormValue("key")
			if key == "" {
				return fail(http.StatusBadRequest, "missing key")
			}
			if op == "session/end-first" {
				inv.refusals.endFirst(key)
				msg = "ending " + key + " before the next TerminateSession of it"
			} else {
				inv.refusals.add(key)
				msg = "refusing TerminateSession of " + key
			}
			return nil
		}
		if op == "vm/list" {
			if r.Method != http.MethodGet {
				return fail(http.StatusMethodNotAllowed, "%s wants GET", r.URL.Path)
			}
			msg = inv.list()
			return nil
		}
		if r.Method != http.MethodPost {
			return fail(http.StatusMethodNotAllowed, "%s wants POST", r.URL.Path)
		}
		if err := r.ParseForm(); err != nil {
			return fail(http.StatusBadRequest, "bad parameters: %s", err)
		}
		name := r.Form.Get("name")
		if name == "" {
			return fail(http.StatusBadRequest, "missing name")
		}
		ips, err := parseIPs(r.Form["ip"])
		if err != nil {
			return fail(http.StatusBadRequest, "ip: %s", err)
		}
		inv.mu.Lock()
		defer inv.mu.Unlock()
		ctx := r.Context()
		switch op {
		case "vm/add":
			if byName(name) != nil {
				return fail(http.StatusConflict, "a VM named %q exists", name)
			}
			vm, err := inv.add(ctx, vmSpec{name: name, ips: ips})
			if err != nil {
				return fail(http.StatusInternalServerError, "add %q: %s", name, err)
			}
			status, msg = http.StatusCreated, fmt.Sprintf("added %s %s", name, vm.Self.Value)
			return nil
		case "vm/rename", "vm/remove", "vm/set-ips":
		default:
			return fail(http.StatusNotFound, "unknown endpoint %s", r.URL.Path)
		}
		vm := byName(name)
		if vm == nil {
			return fail(http.StatusNotFound, "no VM named %q", name)
		}
		switch op {
		case "vm/rename":
			to := r.Form.Get("new")
			if to == "" {
				return fail(http.StatusBadRequest, "missing new")
			}
			if to != name && byName(to) != nil {
				return fail(http.StatusConflict, "a VM named %q exists", to)
			}
			if err := inv.rename(ctx, vm, to); err != nil {
				return fail(http.StatusInternalServerError, "rename %q: %s", name, err)
			}
			msg = fmt.Sprintf("renamed %s %s to %s", vm.Self.Value, name, to)
		case "vm/remove":
			if err := inv.remove(ctx, vm); err != nil {
				return fail(http.StatusInternalServerError, "remove %q: %s", name, err)
			}
			msg = fmt.Sprintf("removed %s %s", name, vm.Self.Value)
		case "vm/set-ips":
			setGuestIPs(vm, ips)
			msg = fmt.Sprintf("set %s guest IPs to [%s]", name, strings.Join(ips, ","))
		}
		return nil
	}()
	var he *httpError
	if errors.As(err, &he) {
		status, msg = he.status, he.msg
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintln(w, strings.TrimRight(msg, "\n"))
}

// list is the vm/list body: one VM a line, sorted by name.
func (inv *inventory) list() string {
	var lines []string
	for _, vm := range allVMs() {
		name, ref, ips := describe(vm)
		lines = append(lines, name+"\t"+ref+"\t"+strings.Join(ips, ","))
	}
	return strings.Join(lines, "\n")
}
