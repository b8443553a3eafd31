// CPrefetch is one header of static inline functions; SwiftPM wants one source file per C
// target: this is it.
#include "cb_prefetch.h"
