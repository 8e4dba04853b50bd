// Package eventbus is a VM's event stream on the host: every
// monitoring.Point the monitor publishes gets the next sequence number
// ("seq") and goes, as one JSON line, to the rotating events.jsonl, to a
// bounded in-memory history, and to followers (`gatevisor events -f`),
// who see exactly the lines the file gets.
//
//	Publish ─► decision? ─► aggregate (per key, per second; global budget) ─┐
//	           IDS, notice ──────────────────────────────────────────────────┴► seq ─► events.jsonl (rotating)
//	                                                                              ├► history: one ring per category
//	                                                                              └► followers (dropped if too slow)
//	Stream ◄─ history (default) | files read back by seq (Query: before, after, limit)
//
// # Floods
//
// A guest decides how often a gate decides: one process can make the
// network gate deny thousands of flows a second. Decisions (kernel and
// network gate) that repeat a monitoring.RepeatKey beyond PerKey in one
// second of the bus's clock, or come when Budget individual decisions were
// already written in that second, are not written one by one: each key
// gets one aggregate point for the second (monitoring.Repeat: the count,
// the first and last time, the last one's path or addresses), written when
// the second ends (a timer) or when the bus closes. Past MaxAggregates
// aggregates in a second, or MaxTracked keys, decisions merge by kind,
// verdict and rule (Repeat.Merged), keys that come from the policy, not
// the guest. What the bus writes per second is so bounded by the policy,
// not by the guest. IDS observations and notices are never aggregated and
// never count against the budget.
//
// # The file
//
// events.jsonl rotates by size like the audit log (package logfiles):
// before a line would take it past MaxSize it becomes events.jsonl.1 (.1
// becomes .2, ...), and files beyond Keep are deleted first, so the files
// never hold more than MaxSize × (Keep+1) bytes (a line is at most
// MaxLine, which MinMaxSize holds). Lines go to the page cache, not
// fsynced: the audit log is the durable record. Every file is created,
// opened and read through safefile. A write that fails (a full disk, a
// rotation that cannot rename) never blocks or stops the monitor: the line
// still reaches the history and followers, the failure is counted
// (Stats) and told as an "events" notice at most once a minute, and the
// file is retried at the next line (reopened at most once a second). The
// sequence number goes on from the last line of the files when a VM of the
// same name starts again.
//
// # History and paging
//
// The history keeps the last points per category (decisions, IDS
// observations, notices), each ring bounded in lines and bytes, merged by
// seq when read: a decision flood cannot push an IDS finding out. Paging
// (Query with Before, After or Limit) reads the files back, newest first,
// with a line cap (MaxLine; longer and unparseable lines are skipped), at
// most Keep+1 files, at most Limit lines and MaxPageBytes held, and
// streams forward reads without holding them.
//
// Lock order: Bus.mu is a leaf; Options.Logf is called without it.
package eventbus
