// A plain mutex for the engine's bookkeeping threads (plugin host, snapshot writer): never taken
// on a shard's hot path.
import Glibc

final class Lock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    /// Runs `body` if the lock is free now; otherwise skips it.
    func ifFree(_ body: () -> Void) {
        guard pthread_mutex_trylock(&mutex) == 0 else { return }
        defer { pthread_mutex_unlock(&mutex) }
        body()
    }

    func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
