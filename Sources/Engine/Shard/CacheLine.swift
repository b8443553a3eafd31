// Memory the shard's thread reads or writes on its loop, allocated on cache lines of its own:
// a word another thread writes often (a client in the same process, the control thread) that
// happened to share a line with it would make the shard's loop miss, and by how much would
// depend on where the allocator put things. Seen: the in-process benchmark bimodal, 200 or 270
// ns/order from run to run.

/// Allocates `count` values of `T`, starting on a 128-byte boundary (two lines: the adjacent
/// line prefetcher pulls pairs) and padded to a multiple of 128 bytes. Free with `deallocate()`.
func cacheAligned<T: ~Copyable>(_: T.Type, count: Int) -> UnsafeMutablePointer<T> {
    let bytes = max(128, (MemoryLayout<T>.stride * count + 127) & ~127)
    return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 128).bindMemory(to: T.self, capacity: count)
}
