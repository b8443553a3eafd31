// CPluginABI is the plugin ABI header and nothing else: a plugin or a tool that includes it links
// no library of the engine's (no liburing, no libnuma). SwiftPM wants one source file per C
// target; this is it.
#include "crossbook_plugin.h"
