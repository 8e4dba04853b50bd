// Package audit is gatevisor's append-only, tamper-evident audit log: one
// JSON object per line, written durably before the security server's verdict
// reaches a gate, each line chained to the one before it by a SHA-256 hash.
//
// Gates never write to it directly.
//
// # Records
//
// A decision record is what the security server decided (Record with Kind
// ""). The log adds chain records of its own, told apart by "kind":
//
//	open    written by Open: the VM's name and the digest and sequence number
//	        of the policy snapshot in force (Options), the bytes of a torn
//	        record Open cut off ("repaired"), and "unclosed" when the record
//	        before it is not a close record (the last session was cut short)
//	policy  a new policy snapshot took effect (AppendPolicy): digest, sequence
//	pruned  retention deleted rotated files: how many, which n range, their
//	        bytes and the hash of the last record deleted
//	close   written by Close: the chain's head is sealed
//
// Every record carries "n", a sequence number contiguous across rotation,
// and "prev", the hex SHA-256 of the previous record's exact line bytes
// (without its newline). The first record of a new log is an open record
// whose prev is Genesis (64 zeros), so the whole chain hangs from the VM and
// policy it names. Reopening an existing log chains its open record to the
// last record already there (or, if the current file is empty, to the last
// record of FILE.1).
//
// # Durability
//
// With SyncEvery (the default) each record is one write(2) on an O_APPEND
// file followed by fsync(2) before Append returns, so an acknowledged record
// survives a crash of gatevisor or of the host. A record cut short by a
// crash mid-write is a final line without a newline: readers skip it and
// report it as torn, and Open truncates it away (saying so in its open
// record) so that the next record starts on a clean line. Open refuses a
// file whose last line is not a record rather than truncate or continue it.
// Files are created through safefile: no symbolic links, nothing owned by
// another user or writable by others. A Log holds an exclusive flock(2) on
// its file, so a second writer (in this process or another) fails to open
// it (ErrInUse) instead of interleaving a second chain.
//
// # Rotation and retention
//
// When a record would take the current file past Options.MaxSize, the file
// is fsynced and renamed to FILE.1 (FILE.1 to FILE.2, ...), the directory
// is fsynced, and the record goes to a new FILE; its prev is the hash of the
// last record of FILE.1, so the chain runs on across files. At most
// Options.Keep rotated files are kept. Evidence is never dropped silently:
// before rotation deletes a file, a pruned record saying what is deleted is
// written and fsynced into the chain; a crash between the two leaves the
// files in place and Open prunes them again. Options.OnNearLimit is called
// when the retained bytes first reach 80% of the capacity
// (MaxSize × (Keep+1)) and after every prune. MaxSize < 0 never rotates and
// so never deletes anything.
//
// # Verification
//
// Verify (and Walk, which also hands each record to a callback) reads
// FILE.N ... FILE.1, FILE in order and checks that every line is a record,
// that n is contiguous, that every prev is the hash of the line before it,
// and that the oldest record either starts a log (Genesis) or follows the
// records a pruned record says were deleted. It names the first broken link
// precisely (file, line, n, and whether a record was edited, is missing, was
// inserted or is out of order), and reports whether the log ends with a
// close record and its head (last n and hash). A torn final line is not
// tampering: the log verifies up to the last complete record and the report
// says the line was torn. Records written before the chain existed (no
// prev) are reported as unchained: they cannot be verified.
//
// # Limits
//
// The chain is a hash chain, not a signature: it makes an edit, deletion,
// insertion or reordering of records evident as long as the records after
// it are left alone. Someone who can write the files can also rewrite every
// record after the one they change, recompute each prev, and the file alone
// will verify. In particular an edit or deletion of the very last record,
// or a truncation at a line boundary, cannot be detected from the file
// alone (a missing close record is the only sign, and only once the VM has
// stopped). What detects these is a head recorded elsewhere: the running
// monitor's (*Log).Head, or a head copied off the host earlier, given to
// Walk as WalkOptions.Expect (gatevisor audit --verify --expect-head N:HASH):
// record N must still exist and still have that hash.
//
// Verifying a log that is being written reads a moving target: a rotation
// while Walk reads renames the files under it and may show as a break that
// is not one: verify again, or compare the head with (*Log).Head.
//
// Lock order: Log.mu is a leaf; OnNearLimit is called without it.
package audit
