// The two clocks the engine and its tools read: monotonic for intervals and latencies, the wall
// clock for engine timestamps. clock_gettime through the vDSO: no syscall.
import Glibc

@inlinable @inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Nanoseconds since the epoch.
@inlinable @inline(__always)
public func realtimeNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
