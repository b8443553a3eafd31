// The one place a shard's sequence numbers and engine time are assigned.
//
// Live: a batch of commands taken off one ring gets one engine time (`beginBatch`); each
// command gets the next sequence (`next`), is journaled under it, and is applied (`commit`,
// from the code path live commands and replayed ones share). Recovery: the journal says which
// sequence and engine time each record had (`replayed`). A command the journal refuses is not
// committed: it stays in its ring and gets the same sequence when it is taken again.

import SharedMemory

/// What identifies one sequenced command, passed to everything that acts on it.
struct CommandContext {
    let sequence: UInt64
    let session: UInt32
    /// The engine time of the command's batch (realtime ns): journaled with it, in its reports.
    let engineTime: UInt64
}

struct Sequencer {
    /// The last sequence applied (0: none yet).
    private(set) var last: UInt64 = 0
    private var batchTime: UInt64 = 0

    /// A live batch begins: its commands share this engine time.
    @inline(__always)
    mutating func beginBatch() { batchTime = realtimeNanoseconds() }

    /// The context of the next live command from `session`. Nothing changes until `commit`.
    @inline(__always)
    func next(session: UInt32) -> CommandContext {
        CommandContext(sequence: last &+ 1, session: session, engineTime: batchTime)
    }

    /// The context of a journaled record, as the journal has it.
    func replayed(sequence: UInt64, session: UInt32, engineTime: UInt64) -> CommandContext {
        CommandContext(sequence: sequence, session: session, engineTime: engineTime)
    }

    /// The command of `context` is being applied: its sequence is now the last.
    @inline(__always)
    mutating func commit(_ context: CommandContext) { last = context.sequence }

    /// After recovery: the sequence the journal (or the snapshot under it) ends at.
    mutating func resume(after sequence: UInt64) { last = sequence }
}
