package main

import (
	"fmt"
	"sort"
	"strings"
)

// readme is bench/README.md: how to read the figures, and the table of the
// run that wrote it.
func readme(rep Report) string {
	var b strings.Builder
	head := strings.NewReplacer(
		"{JUPYTER_SERVER}", versionOf(rep, "jupyter_server", "Jupyter Server"),
		"{JLAB_SERVICES}", versionOf(rep, "@jupyterlab/services", "`@jupyterlab/services`"),
	).Replace(readmeHead)
	b.WriteString(head)
	fmt.Fprintf(&b, "\n## Latest run\n\n%s, commit `%s`%s, Go %s, %s CPUs (%s), %s GiB, Linux %s, load average at start %s; the whole run took %.0f s.\n",
		rep.Generated, short(rep.GitCommit), map[bool]string{true: " (with uncommitted changes)", false: ""}[rep.GitDirty],
		strings.TrimPrefix(rep.GoVersion, "go"), rep.Host["cpus"], rep.Host["cpu"], rep.Host["memory_gib"], rep.Host["linux"],
		rep.Host["loadavg_at_start"], rep.DurationSec)
	if args := rep.Cellgate["args"]; args != "" {
		fmt.Fprintf(&b, "cellgate ran as `%s`.\n", args)
	}
	if cl := rep.Cellgate["cluster"]; cl != "" {
		fmt.Fprintf(&b, "The cluster phase ran %s.\n", cl)
	}
	b.WriteString("\n")
	b.WriteString(table(rep.Rows, true))
	if len(rep.Problems) > 0 {
		b.WriteString("\nProblems in this run:\n\n")
		for _, p := range rep.Problems {
			fmt.Fprintf(&b, "- %s\n", strings.SplitN(p, "\n", 2)[0])
		}
	}
	b.WriteString(readmeRows)
	var targets []string
	for _, r := range rep.Rows {
		if r.Target != "" {
			targets = append(targets, fmt.Sprintf("- **%s** — %s (`%s`): measured %s", r.Target, strings.TrimSpace(r.Label), r.ID, r.result()))
		}
	}
	sort.Strings(targets)
	b.WriteString("\n## Targets from the issues, against this run\n\n")
	b.WriteString(strings.Join(slicesCompactStrings(targets), "\n"))
	b.WriteString("\n")
	return b.String()
}

func slicesCompactStrings(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

const readmeHead = `# cellgate benchmarks

This file and ` + "`results.json`" + ` are written by ` + "`make bench`" + ` (` + "`scripts/bench.sh`" + `); do not edit
them by hand. Every figure comes from the run below: nothing is typed in.

## How to run

    make bench          # deps, build, Go benchmarks, then cmd/cellbench (the latest run's duration is below)

` + "`scripts/bench.sh`" + ` first runs the Go benchmarks (` + "`go test -bench`" + ` in kernelpool, sandbox, storage and
jupytermsg), then builds and runs ` + "`cmd/cellbench`" + `, which:

- starts ` + "`bin/cellgate serve`" + ` as deployed (` + "`--sandbox=bwrap`" + `, embedded FerretDB, pool ` + "`python3=4`" + `: the python3 part of the default, ` + "`auto`" + `, with forked kernels; ` + "`auto`" + ` also keeps a SageMath kernel ready)
  on a free 127.0.0.1 port, with its data in a temporary directory, and waits for ` + "`/readyz`" + `;
- drives it as clients do (Sage-cell HTTP + websocket, long-polling, ` + "`/service`" + `, permalinks, files, and the
  Jupyter Server API), and starts kernels in-process through ` + "`kernelpool`" + ` for the direct-ZMQ floor and
  the sandboxed/unsandboxed cold starts;
- starts Debian's {JUPYTER_SERVER} (` + "`/usr/bin/python3 -m jupyter_server`" + `, its defaults, private HOME) and runs
  ` + "`bench/jsbench.js`" + ` — the unchanged {JLAB_SERVICES} under Node — against both servers,
  alternating kernel by kernel;
- stops everything it started (SIGTERM, then checks that no kernel process outlived cellgate);
- then, that server stopped, runs the cluster phase: three ` + "`bin/cellgate serve`" + ` instances (sandboxed, the same
  pool) sharing one database over loopback TCP (FerretDB as a process of its own, ` + "`cmd/cellgate-ferretdb`" + `, on a
  throwaway PostgreSQL, as the cluster test runs it), and Debian's ` + "`haproxy`" + ` in front of them with
  ` + "`deploy/haproxy.cfg`" + ` as shipped (package ` + "`deploy/localcluster`" + ` points it at the instances; the cluster
  tests run it the same way);
- prints the table and writes ` + "`results.json`" + ` and this file.

Fewer samples for a quick look: ` + "`go run ./cmd/cellbench -cellgate bin/cellgate -sessions 5 -rounds 50 -skip jupyterlab,memory`" + `
(see ` + "`-help`" + `; without ` + "`-gobench`" + ` the Go benchmark rows are missing and reported as problems). The cluster
phase alone: ` + "`-skip coldstart,sessions,page,execute,jupyterlab,service,refill,burst,permalinks,stored,files,memory`" + `
(with ` + "`-out`" + ` elsewhere, so that this file is not replaced by a partial run).

## How to read it

- The machine is small (2 cores) and shared with other work: absolute figures move by tens of percent between
  runs. Compare figures **within one run**: the paths that are compared are measured side by side
  (interleaved round by round, or alternating kernel by kernel), and ratios are the figures to quote.
- ` + "`p50 · p99 (n=…)`" + ` rows are distributions over n samples; with n below 100, p99 is the worst sample or
  close to it. Rows with one value are a mean (Go benchmarks: ns/op over the iterations shown as "mean of N")
  or a single measured quantity.
- ` + "`results.json`" + ` holds every row with its unit, source (cellbench or the Go benchmark) and all
  quantiles, the raw Go benchmark lines, the commit, the host, and cellgate's command line.
`

const readmeRows = `
## What each row means

**Kernel pool and cold start.** *lease from a warm pool*: ` + "`kernelpool.Lease`" + ` when a ready kernel is waiting
(BenchmarkLease; the refill is not timed). *python3/sagemath kernel cold start*: ` + "`StartKernel`" + ` until
` + "`kernel_info_reply`" + `, unsandboxed (BenchmarkColdStart). *launch → ready, --sandbox=none / bwrap*: the same,
measured in cellbench with the real bwrap launcher and without, alternating; the ratio is the sandbox's cost
on a kernel start (issue 5). The *import ipykernel* and */usr/bin/true* rows (sandbox package benchmarks)
split that cost: bwrap's own setup and teardown vs Python's start. With few samples the ratio wanders around
1 from run to run: the sandbox's own cost (tens of ms) is small next to Python's start. *kernel shutdown*:
` + "`Kernel.Shutdown`" + ` until the process is reaped (and, sandboxed, its tmpfs and uid released).
*first 1+1 on a fresh kernel*: the first execution right after ready, alone, and while another kernel starts
(what a replacement started at once after a lease would cost the leased kernel: the pool holds the refill back
for a second while another kernel is ready, and starts it at once when none is). *cellgate process start → /readyz 200*:
from exec to the first 200, i.e. the embedded database open and one sandboxed kernel ready.
*launch → ready in bwrap, cold / forked* (BenchmarkSandboxedStart, one run): a cold start; a fork of a template
that only imported the kernel machinery (*forked-imports*); a fork of a template that also built the kernel
application and its shell (*forked*, the default: see sandbox/doc.go, "Forked kernels"); the *sagemath* rows
(BenchmarkSandboxedStartSage) are the same for SageMath, whose template has imported ` + "`sage.all`" + ` and drawn a plot. *first plot*
(BenchmarkFirstPlot): ` + "`import matplotlib.pyplot; plt.plot(...)`" + ` until its reply and idle on a fresh kernel, cold
and forked (the template has imported matplotlib and drawn a throw-away figure).
*fresh kernels per second from an empty pool* (BenchmarkSupply, cold and forked in one run): 20 leases at once on
a new pool that keeps no kernel ready (default ` + "`MaxConcurrentStarts`" + `, 2), until every kernel is leased and has
answered ` + "`1+1`" + `; 20 over that time (issue 10's sustained supply; the template starts before the timing).
*each of the pool's starts in that burst*: the mean of those 20 starts, call to ready, two running at once: compare
the lone start of BenchmarkSandboxedStart. *with N starts at once* (BenchmarkSupplyConcurrentStarts): the same
burst of forked kernels under ` + "`MaxConcurrentStarts`" + ` 1 to 4, the four taking turns round by round: whether more
starts at once than cores would supply more (a forked start partly waits on the template and the kernel's sockets).

**New session.** A reader opening a cell: ` + "`POST /kernel`" + ` (one-shot, as the Sage-cell embed does), websocket
to ` + "`/kernel/{id}/channels`" + `, ` + "`execute_request`" + ` of ` + "`1+1`" + `, until its ` + "`execute_reply`" + `; then ` + "`DELETE`" + `.
*warm pool*: before each session the bench waits until the pool is full again, so every session gets a ready
kernel — the figure the 20 ms target is about. *first execute* vs *second 1+1*: a kernel's first execution is slower
than the next ones in the kernel itself (compare the direct-ZMQ first execution in the first section).
*through POST /api/kernels*: the same from Go over the Jupyter Server API, interleaved with the Sage-cell
sessions. *back to back*: sessions with no pause, so after the ready kernels
are gone each one waits for a kernel start: what readers see when arrivals outpace the pool.
*a page of 10 cells* (issue 10): the common Sage-cell textbook page, whose 10 cells evaluate on load, each a
one-shot session (` + "`POST /kernel`" + `, websocket, ` + "`print(1+1)`" + ` until its ` + "`execute_reply`" + `); *one after another*: each
cell starts when the one before has its reply; *all at once*: the 10 start together. *all replies after* is from the
first ` + "`POST /kernel`" + ` to the last reply, over 5 pages, each begun on a full pool; *each cell* is every cell's own
time over those pages. The sessions of a page stay open until it is done (closing and ` + "`DELETE`" + ` are not timed),
and each cell comes from its own reader address: the per-address cap (a quarter of ` + "`--max-kernels`" + `) would
refuse one reader's fifth open session.

**Execute round trip.** One kernel per path, all sandboxed the same way, one ` + "`1+1`" + ` per path per round, from
sending the ` + "`execute_request`" + ` until both the ` + "`execute_reply`" + ` and the ` + "`status: idle`" + ` have arrived
(what ` + "`kernelpool.Execute`" + ` and ` + "`@jupyterlab/services`" + ` wait for). *direct ZMQ*: ` + "`kernelpool.Execute`" + `
from Go, no gateway: the floor. *Sage-cell websocket*: through cellgate's relay, including what cellgate
does for every Sage-cell execution (permalink enqueue, a snapshot of the kernel's directory before and an
upload scan after). *long-polling*: POST the request, a GET held open delivers the messages (a receive loop
is always open, as in a polling client). *Jupyter API websocket*: ` + "`/api/kernels/{id}/channels`" + `, legacy JSON,
which has no permalink/file hooks. *added at p50* subtracts the direct-ZMQ p50 of the same table (issue 3's
target: under 0.5 ms). BenchmarkExecuteZMQ (the Go benchmark, on an unsandboxed kernel) is shown for reference
only: it is a mean taken minutes earlier in the run, and on this shared machine it moves by several ms from
one run to the next, while the interleaved floor is measured in the same seconds as the gateway paths.
*execute floor* (BenchmarkExecuteFloor): one sandboxed forked kernel, timed round by round in turn by
` + "`kernelpool.Execute`" + ` and by ` + "`jupyter_client`" + ` (the fastest independent client, Python) on the kernel's own
sockets, and by ` + "`jupyter_client`" + ` on an ipykernel its ` + "`KernelManager`" + ` launched (as Jupyter Server does: unsandboxed,
tcp): the floor measured with an independent client, and what cellgate's launch costs the kernel's own answer.
*cellgate CPU per execution* is the CPU time all of cellgate's threads (the embedded database included) used
over 100 executions on one path, divided by 100: it shows what each path costs the gateway, e.g. the
permalink write that every Sage-cell execution causes.

**@jupyterlab/services.** The same script against both servers: *startNew → idle and connected* is
` + "`KernelManager.startNew`" + ` until the kernel reports idle over a connected websocket (start-to-ready); on
cellgate the kernel comes from the sandboxed prewarmed pool, on Jupyter Server it is launched on demand,
unsandboxed. *requestExecute → future.done* is one ` + "`1+1`" + ` (reply and idle). Ratios are Jupyter Server / cellgate,
so above 1 means cellgate is faster. The two *Jupyter Server, Go client* rows time the same ` + "`1+1`" + ` on a
Jupyter Server kernel from Go (legacy JSON): until the ` + "`busy`" + ` status, and until the reply and ` + "`idle`" + `, to show
where Jupyter Server's execute time goes.

**/service throughput.** 1, 4 and 16 clients each post ` + "`code=print(6*7)`" + ` in a loop for the stated time;
each computation leases a fresh sandboxed kernel and ends it, so throughput is bounded by how fast kernels
start (two at a time). Errors are non-200 answers or wrong output (a 503 when clients outrun the pool: at once
when the queue's expected wait exceeds ` + "`--lease-timeout`" + `, 20 s, or after waiting it out); a client told to
come back later waits as ` + "`Retry-After`" + ` says before asking again. *burst of 20*: 20 concurrent ` + "`POST /kernel`" + `; *pool full again*: from the
burst until ` + "`/readyz`" + ` shows every pool at its ready size.

**Bursts.** N concurrent ` + "`POST /kernel`" + ` (each kernel held until the last answer, then deleted) or ` + "`POST /service`" + `,
each from its own reader address, asking for python3. *all answered after* is the time from sending the burst to
the last answer; *p50_ms/p99_ms* are over every answer, *errors* counts non-200 answers (a 503), *errors_p50_ms*
says how soon they came (at once: the fair queue's estimate refused them; about 20 s: they waited out
` + "`--lease-timeout`" + `), *ready_at_start* is the ready kernels when the burst began. Rows come in threes, on a
settled pool each: this cellgate with its pool at its floor (` + "`--pool`" + `, after a minute without requests); the
same again within the minute, when its elastic pool has grown from the first burst; and a second cellgate
started in the same run with the old behaviour (` + "`--lease-queue fifo --pool-memory-mb 0`" + `: one line, each request
waiting out the lease timeout, a pool that never grows). The bursts run one at a time, never two at once.

**Memory.** cellgate's RSS (the embedded FerretDB runs in the same process) just after start, before the idle
sessions, and with N idle sessions open (websocket attached, one ` + "`1+1`" + ` executed); the difference over N is the
gateway's cost per idle session. *idle sandboxed … kernel* (BenchmarkIdleKernelMemory, cold and forked in one run): six kernels of a kind alive
at once, each having run ` + "`1+1`" + `; *PSS per kernel* divides pages shared among processes between their sharers (so a
forked kernel's share of its template falls as more kernels are alive), *private memory* is what no other process
maps (Private_Clean + Private_Dirty): what one more kernel costs the machine. *per idle sandboxed kernel* sums the proportional set size (PSS: shared pages
divided among their users) of every process under cellgate — the python kernels and their two bwrap processes
each — over the number of kernels; RSS, which counts shared libraries in full for every kernel, is shown beside.
N is 100 by default (-idle-sessions); each idle session holds a real sandboxed kernel.
*DELETE of the N sessions until their kernels are gone*: the N sessions are deleted one after
the other, then the bench waits until only the pool's ready kernels are left. *cellgate CPU with N idle
sessions*: cellgate's CPU time over 5 s while they sit idle. The *idle python that imported ipykernel* rows are the sandbox package's BenchmarkIdleMemory.
*the python fork template's own PSS*: the template those kernels were forked from (read from ` + "`/metrics`" + `
with them alive): the pages it shares with them count a share to each. *idle connections from one address*
(gateway BenchmarkIdleConnections): another process opens 10,000 keep-alive connections from 127.0.0.1 and holds
them; the rows show how many the gateway kept (the rest refused by the per-address cap), its RSS and open
descriptors meanwhile, and ` + "`GET /healthz`" + ` from 127.0.0.2 on a new connection each time.

**Storage.** *POST /permalink* and *GET /permalink?q=* through HTTP against the embedded FerretDB; creation is
answered from the write-behind queue (so it does not wait for the database), lookups happen after the queue
has written. *kernel writes 10 MB*: an execution that writes a 10 MB file into the kernel's working directory,
from sending it until the ` + "`cellgate.files`" + ` message announcing the upload; MB/s is 10 MB over that time (end to
end), and again less the time of an execution that writes nothing. *GET /files/…*: fetching it back (sha256
checked against the ETag). The Go benchmark rows time the storage package directly, without HTTP or a kernel.

**Cluster.** Three instances share one database; each answer names the instances that handled it
(` + "`Cellgate-Instance`" + `). *execute round trip … to the session's owner* and *… to another instance*: one session,
started on the first instance, with one Sage-cell websocket to it and one to the second instance, which relays
the websocket to the owner; one ` + "`1+1`" + ` on each per round, interleaved, until reply and idle. *added by the hop*
is the forwarded path less the direct one, at p50 and at p99: the cost of the extra instance a client reaches
when the balancer sends it elsewhere than the owner. *new session → first 1+1 reply through HAProxy*: a reader
opening a cell through a balancer over one instance and through one over all three, session by session in
turn, every pool full before each (so placement never moves a session): with three, the ` + "`POST /kernel`" + ` and the
websocket land on instances in turn, and whichever is not the owner forwards. *SIGKILL … long-poll client
told it ended*: a session on the last instance, whose process group (kernels included) is killed; a client
asks the session's long-poll through the balancer every 10 ms (503 while the owner is unreachable but not yet
known dead) until it answers ` + "`ended: true`" + `; the expiry and heartbeat of the cluster bound it. *SIGTERM → /readyz
503* (asked of the instance directly every 10 ms) and *SIGTERM → the balancer's last request to it*: requests
go through the balancer every 10 ms, and the last one that the instance answered (its ` + "`Cellgate-Instance`" + `) before
3 s with none marks when haproxy took it out of the ready backend, which its health-check timing (shown above)
bounds; the instance drains a live session meanwhile, so it is still up and could still be picked. Each stopped
instance is restarted at its address under a new id before the next round.

**Wire codec.** jupytermsg's websocket encoders and decoders on a typical stream message and on a 1 MiB image.
`
