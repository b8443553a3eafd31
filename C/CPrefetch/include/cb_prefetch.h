// Software prefetch for the book's batch path (Swift has no prefetch intrinsic). Header only:
// the book stays free of any library.
#ifndef CB_PREFETCH_H
#define CB_PREFETCH_H

/// Asks for the cache line holding `p`, to be written soon (a hint: never faults, changes nothing).
static inline void cb_prefetch_write(const void *p) { __builtin_prefetch(p, 1, 3); }

#endif
