// A mapping of a file another process can shrink raises SIGBUS when a page past the new end is
// touched. The engine maps files its clients made (their rings, their session files): a client
// that truncates one must not be able to kill it. Those mappings are registered here; on SIGBUS
// inside one, the handler puts private zero pages over the whole mapping (so the access that
// faulted, and every later one, reads zeros: cursors that went back, which the ring code
// already treats as a fault) and marks the mapping faulted. A SIGBUS anywhere else keeps its
// default action. The same technique protects Wayland compositors from their clients' pools.
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include "cb_sync.h"

#define CB_GUARDS 4096

struct cb_guard {
    _Atomic(uintptr_t) base;
    _Atomic(size_t) size;
    _Atomic(uint32_t) faulted;
};

static struct cb_guard guards[CB_GUARDS];
static atomic_int installed;
/// The handler before ours (the Swift runtime's backtracer, or the default): a SIGBUS that is
/// not in a guarded mapping goes back to it.
static struct sigaction previous;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < CB_GUARDS; i++) {
        uintptr_t base = atomic_load_explicit(&guards[i].base, memory_order_acquire);
        size_t size = atomic_load_explicit(&guards[i].size, memory_order_acquire);
        if (base != 0 && address >= base && address < base + size) {
            // mmap is async-signal-safe in practice on Linux (a system call, no libc state).
            mmap((void *)base, size, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            atomic_store_explicit(&guards[i].faulted, 1, memory_order_release);
            return;  // the faulting access is retried, on zeros now
        }
    }
    // Not a guarded mapping: what was there before handles it (the access faults again on return).
    sigaction(sig, &previous, NULL);
}

int32_t cb_guard_add(void *base, size_t size) {
    if (!atomic_exchange(&installed, 1)) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        sigaction(SIGBUS, &action, &previous);
    }
    for (int i = 0; i < CB_GUARDS; i++) {
        uintptr_t expected = 0;
        // Claim a free slot: size first is not needed, the handler checks base != 0 and the
        // range; a zero size until it is stored matches nothing.
        if (atomic_compare_exchange_strong(&guards[i].base, &expected, (uintptr_t)1)) {
            atomic_store(&guards[i].faulted, 0);
            atomic_store(&guards[i].size, size);
            atomic_store_explicit(&guards[i].base, (uintptr_t)base, memory_order_release);
            return i;
        }
    }
    return -1;
}

void cb_guard_remove(int32_t slot) {
    if (slot < 0 || slot >= CB_GUARDS) return;
    atomic_store(&guards[slot].size, 0);
    atomic_store_explicit(&guards[slot].base, 0, memory_order_release);
}

int32_t cb_guard_faulted(int32_t slot) {
    if (slot < 0 || slot >= CB_GUARDS) return 0;
    return (int32_t)atomic_load_explicit(&guards[slot].faulted, memory_order_acquire);
}
