/* Crossbook plugin ABI, version 1: the one header a plugin needs.
 *
 * A plugin is a shared library that exports one function, `crossbook_plugin_entry`, returning
 * a pointer to its descriptor (cb_plugin). The engine loads it with dlopen(RTLD_NOW |
 * RTLD_LOCAL), checks the descriptor, calls `start` with a table of host functions
 * (cb_host_api), asks for `health` about once a second, and calls `stop` when it stops.
 *
 * ABI POLICY (as SQLite does for its extensions)
 * - Every struct that crosses the boundary starts with `uint32_t size`: sizeof(the struct) as
 *   its writer was compiled. Structs only ever grow at the end; no field is ever removed,
 *   reordered or retyped while CB_PLUGIN_ABI_VERSION stays 1.
 * - The host table (cb_host_api) is appended to as the host learns new functions. A plugin
 *   built against an older header sees a prefix of it and keeps working. A plugin built
 *   against a newer header must check CB_HOST_HAS(api, field) before it calls a function
 *   appended after the ones it knows the host has.
 * - The descriptor (cb_plugin) is read by the host only up to the size the plugin says; fields
 *   past it count as absent (zero).
 * - CB_PLUGIN_ABI_VERSION changes only for a break; a host refuses a plugin of another version
 *   with an error naming both.
 *
 * THREADING
 * - A plugin owns its threads. Nothing of a plugin ever runs on a shard thread: the shards reach
 *   plugins and plugins reach the shards only through rings, like any other process.
 * - `start` and `stop` run on the engine's main thread, `health` on its control thread; both
 *   must return promptly (no blocking I/O in `health`). `start` may open producers and
 *   subscriptions; it should start the plugin's threads and return.
 * - A producer (cb_producer) and a subscription (cb_subscription) are single-threaded: one
 *   thread at a time uses each. Open one per thread.
 * - Host functions other than those on a producer or a subscription may be called from any
 *   thread of the plugin, between the start of `start` and the end of `stop`.
 * - A lease (cb_lease_ops) has its own lifetime, from its `open` to its `close`.
 *
 * LIFETIMES
 * - The `cb_host *` handed to `start` and every string the host returns (config values, symbol
 *   names) stay valid until `stop` returns. After `stop` returns the plugin must have no thread
 *   running and must hold no producer or subscription (the host closes any left open).
 * - The host never dlcloses a plugin: its code stays mapped until the process exits.
 * - Snapshot-store plugins start before the engine recovers its books and stop after its shards
 *   have stopped; all other plugins start once the engine serves and stop before its shards
 *   drain. Plugins stop in the reverse of the order they started.
 *
 * ERRORS: host functions return CB_OK (0) or a negative cb_status; a plugin's `start` returns
 * CB_OK or a negative cb_status and writes a one-line reason into `error`.
 *
 * All multi-byte fields are little-endian (the host's order on x86-64 and arm64).
 */
#ifndef CROSSBOOK_PLUGIN_H
#define CROSSBOOK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CB_PLUGIN_ABI_VERSION 1u
/* The symbol every plugin exports: `const cb_plugin *crossbook_plugin_entry(void);` */
#define CB_PLUGIN_ENTRY "crossbook_plugin_entry"

#if defined(__GNUC__)
#define CB_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define CB_PLUGIN_EXPORT
#endif

typedef enum cb_status {
    CB_OK = 0,
    CB_ERR_INVALID = -1,        /* an argument is wrong (NULL, unknown shard, bad size) */
    CB_ERR_UNKNOWN_SYMBOL = -2, /* no symbol with that id or name */
    CB_ERR_FULL = -3,           /* the ring is full: the engine is behind; retry later */
    CB_ERR_CLOSED = -4,         /* the engine stops, or the subscription was detached */
    CB_ERR_NOT_FOUND = -5,      /* no such key, snapshot or file */
    CB_ERR_LIMIT = -6,          /* out of slots (counters, producers) */
    CB_ERR_IO = -7,             /* a system call failed; the log or `error` says which */
    CB_ERR_UNSUPPORTED = -8,    /* this host or plugin cannot do that */
    CB_ERR_FAILED = -9          /* anything else; the log or `error` says what */
} cb_status;

/* What a plugin does (bits of cb_plugin.kinds). */
enum {
    CB_KIND_INGRESS = 1u << 0,        /* submits commands through producers */
    CB_KIND_EGRESS = 1u << 1,         /* reads events through subscriptions */
    CB_KIND_ROUTING = 1u << 2,        /* decides symbol -> instance/shard */
    CB_KIND_SNAPSHOT_STORE = 1u << 3, /* stores shard snapshots (registers a cb_snapshot_store) */
    CB_KIND_METRICS = 1u << 4         /* exports counters */
};

typedef enum cb_health {
    CB_HEALTH_OK = 0,
    CB_HEALTH_DEGRADED = 1, /* working, but something needs a look (say what) */
    CB_HEALTH_FAILED = 2    /* not doing its job (say why) */
} cb_health;

typedef enum cb_log_level { CB_LOG_DEBUG = 0, CB_LOG_INFO = 1, CB_LOG_WARNING = 2, CB_LOG_ERROR = 3 } cb_log_level;

/* ---- Records: the engine's 64-byte wire records, field by field ---------------------------- */

enum { CB_RECORD_VERSION = 1 };
enum { CB_CMD_NEW = 1, CB_CMD_CANCEL = 2, CB_CMD_REPLACE = 3 };
enum { CB_SIDE_BUY = 0, CB_SIDE_SELL = 1 };
enum { CB_ORDER_LIMIT = 0, CB_ORDER_MARKET = 1 };
enum { CB_TIF_GTC = 0, CB_TIF_IOC = 1, CB_TIF_FOK = 2, CB_TIF_POST_ONLY = 3 };
enum { CB_STP_NONE = 0, CB_STP_CANCEL_NEWEST = 1, CB_STP_CANCEL_OLDEST = 2, CB_STP_CANCEL_BOTH = 3,
       CB_STP_DECREMENT = 4 };

/* A command, as it goes into a shard's ring. Fields a type does not use must be zero; the
 * engine rejects a record with stray bytes (reason malformed_command). */
typedef struct cb_command {
    uint8_t version;       /* CB_RECORD_VERSION */
    uint8_t type;          /* CB_CMD_* */
    uint8_t side;          /* CB_SIDE_* (new) */
    uint8_t order_type;    /* CB_ORDER_* (new) */
    uint8_t time_in_force; /* CB_TIF_* (new) */
    uint8_t self_trade;    /* CB_STP_* (new) */
    uint16_t reserved0;    /* 0 */
    uint32_t symbol_id;    /* the engine's number for the symbol (see symbol_lookup) */
    uint32_t account;      /* the engine's number for the account (new) */
    uint64_t order_id;     /* the producer's own, 0 .. 2^48-1, unique among its live orders */
    int64_t price;         /* ticks (limit new, replace); 0 otherwise */
    int64_t quantity;      /* lots (new: quantity; replace: new open quantity); 0 for cancel */
    uint64_t client_time;  /* echoed in reports */
    uint64_t client_sequence;
    uint64_t reserved1; /* 0 */
} cb_command;

enum { CB_REPORT_ACCEPTED = 1, CB_REPORT_REJECTED = 2, CB_REPORT_TRADE = 3, CB_REPORT_CANCELLED = 4,
       CB_REPORT_REPLACED = 5 };

/* An execution report to the producer that owns the order. */
typedef struct cb_report {
    uint8_t version; /* CB_RECORD_VERSION */
    uint8_t type;    /* CB_REPORT_* */
    uint8_t side;
    uint8_t code; /* rejected: reject reason; cancelled: cancel reason; replaced: 1 kept priority;
                     trade: 1 this order was the maker */
    uint32_t symbol_id;
    uint64_t engine_sequence;
    uint64_t order_id; /* the producer's own id */
    int64_t price;
    int64_t quantity;
    int64_t open;
    uint64_t engine_time; /* ns since the epoch, taken by the shard at sequencing */
    uint64_t client_time;
} cb_report;

/* A drop copy (subscribe_output): the report the owner got, with the owner's session in place
 * of the client time. A trade makes two, the maker's (code 1) then the taker's (code 0). */
typedef struct cb_execution {
    uint8_t version; /* CB_RECORD_VERSION */
    uint8_t type;    /* CB_REPORT_* */
    uint8_t side;
    uint8_t code;    /* as in cb_report */
    uint32_t symbol_id;
    uint64_t engine_sequence;
    uint64_t order_id; /* the owner's own id */
    int64_t price;
    int64_t quantity;
    int64_t open;
    uint64_t engine_time;
    uint32_t session; /* the owner's session (a Kafka ingress partition keeps its id across restarts) */
    uint32_t account; /* the order's account (0 for a reject of a cancel or replace of an unknown order) */
} cb_execution;

enum { CB_EVENT_TRADE = 1, CB_EVENT_LEVEL = 2 };

/* A market data event from a shard's event ring. */
typedef struct cb_market_event {
    uint8_t version; /* CB_RECORD_VERSION */
    uint8_t type;    /* CB_EVENT_* */
    uint8_t side;    /* trade: the taker's side; level: the level's side */
    uint8_t reserved0;
    uint32_t symbol_id;
    uint64_t engine_sequence;
    int64_t price;
    int64_t quantity; /* trade: traded; level: total resting at the price (0: gone) */
    int64_t orders;   /* level: resting orders at the price */
    uint64_t engine_time;
    uint64_t reserved1[2];
} cb_market_event;

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(cb_command) == 64, "cb_command is the 64-byte wire record");
_Static_assert(sizeof(cb_report) == 64, "cb_report is the 64-byte wire record");
_Static_assert(sizeof(cb_market_event) == 64, "cb_market_event is the 64-byte wire record");
_Static_assert(sizeof(cb_execution) == 64, "cb_execution is a 64-byte record");
#endif

/* A symbol the engine trades. */
typedef struct cb_symbol {
    uint32_t size; /* sizeof(cb_symbol) of the caller: set it before calling symbol_lookup */
    uint32_t id;
    uint32_t shard;
    uint32_t flags;   /* CB_SYMBOL_* (0 from hosts before them) */
    const char *name; /* valid until stop */
    int64_t tick_size;
    int64_t lot_size;
    int64_t min_price;
    int64_t max_price;
    int64_t max_order_quantity;
} cb_symbol;

/* cb_symbol.flags. CB_SYMBOL_ELSEWHERE: another engine takes this symbol's ingress orders now
   (it lives there, or is moving between this engine and another): an ingress plugin skips its
   messages, as applied by that engine (not a dead letter: the owner reads the same partition). */
enum { CB_SYMBOL_ELSEWHERE = 1 };
/* A symbol id no symbol has: in a rewind's symbols (source_rewind), "read again from the floor". */
#define CB_SYMBOL_ANY UINT32_MAX

/* ---- Metrics ---------------------------------------------------------------------------------- */

enum { CB_METRIC_COUNTER = 0, CB_METRIC_GAUGE = 1, CB_METRIC_HISTOGRAM = 2 };

/* One sample of the engine's metrics, handed to a metrics_read visitor. Samples of one family
 * (one name) come one after another; the first of a family carries its help. */
typedef struct cb_metric {
    uint32_t size;
    uint32_t type;      /* CB_METRIC_* */
    const char *name;   /* Prometheus-style, e.g. crossbook_shard_commands_total */
    const char *help;   /* one line */
    const char *labels; /* ready to print inside {}: shard="0",symbol="BTC-USD"; "" if none */
    double value;       /* counter, gauge */
    /* histogram: cumulative counts of observations <= each bound (seconds); the +Inf bucket is
       `count` */
    uint32_t bucket_count;
    uint32_t reserved;
    const double *bucket_bounds;
    const uint64_t *bucket_counts;
    double sum; /* seconds */
    uint64_t count;
} cb_metric;

typedef void (*cb_metric_visitor)(void *context, const cb_metric *metric);

/* ---- Snapshot stores ------------------------------------------------------------------------ */

typedef void (*cb_snapshot_visitor)(void *context, uint64_t sequence, const char *name);
typedef void (*cb_snapshot_sink)(void *context, const uint8_t *body, size_t length);

/* A place for shard snapshots. The host calls these one thread at a time per shard (its snapshot
 * writer; the replication thread when it seeds a standby; the main thread at start), never from a
 * shard thread; calls for different shards may overlap. A body is opaque bytes, checksummed by the
 * engine inside; the store must hand back exactly what it was given, or an error. */
typedef struct cb_snapshot_store {
    uint32_t size;
    uint32_t reserved;
    void *context;
    /* Stores the snapshot of `shard` taken at `sequence`, whole or not at all (durably). */
    int (*save)(void *context, uint32_t shard, uint64_t sequence, const uint8_t *body, size_t length,
                char *error, size_t error_size);
    /* Calls visit for each snapshot of `shard` (any order). */
    int (*list)(void *context, uint32_t shard, cb_snapshot_visitor visit, void *visit_context);
    /* Loads one snapshot by the name `list` gave: its sequence, and its body handed to sink
       (which copies it). An incomplete or damaged snapshot is an error, never a body. */
    int (*load)(void *context, uint32_t shard, const char *name, uint64_t *sequence, cb_snapshot_sink sink,
                void *sink_context, char *error, size_t error_size);
    /* Optional (a store whose struct ends before them, or leaves them NULL, has none): named
       blobs another engine can read, for moving a book between engines (`crossbook migrate
       --to-instance`). `key` is printable ASCII without spaces, at most 200 bytes. blob_save
       stores it whole or not at all (durably; replacing one of the same key); blob_load hands it
       to sink (CB_ERR_NOT_FOUND: none); blob_delete removes it (none: CB_OK). */
    int (*blob_save)(void *context, const char *key, const uint8_t *body, size_t length, char *error, size_t error_size);
    int (*blob_load)(void *context, const char *key, cb_snapshot_sink sink, void *sink_context, char *error,
                     size_t error_size);
    int (*blob_delete)(void *context, const char *key);
} cb_snapshot_store;

/* The size of a snapshot store without the blob functions (stores built before them). */
#define CB_SNAPSHOT_STORE_MIN_SIZE (offsetof(cb_snapshot_store, load) + sizeof(void *))
static inline size_t cb_snapshot_store_min_size(void) { return CB_SNAPSHOT_STORE_MIN_SIZE; }

/* ---- Routers -------------------------------------------------------------------------------- */

/* The authority over where symbols live (plugins of kind CB_KIND_ROUTING, e.g. redis-routing):
 * the engine asks it before it moves a symbol between its shards and tells it after. The host
 * calls these from the thread that asked for the move (the control socket's, the automatic
 * rebalancer's, or a plugin's own through symbol_migrate), one move at a time. */
/* A route as the authority holds it. */
typedef struct cb_route {
    char instance[128]; /* the engine it names */
    char to[128];       /* MIGRATING to another engine: that engine ("" otherwise) */
    uint32_t shard;
    uint32_t migrating; /* 1: MIGRATING, 0: ACTIVE */
    uint64_t epoch;
    uint32_t to_shard;  /* with `to`: the shard of that engine it goes to */
    uint32_t reserved;
} cb_route;

typedef struct cb_router {
    uint32_t size;
    uint32_t reserved;
    void *context;
    /* Before symbol `symbol_id` moves from shard `from` to shard `to` of this engine: CB_OK lets
       it move (the authority has marked the route as migrating); anything else refuses the move,
       with a one-line reason in `error` (e.g. the authority is unreachable: nothing changes
       route until it is back). */
    int (*route_begin)(void *context, uint32_t symbol_id, uint32_t from, uint32_t to, char *error, size_t error_size);
    /* After: the symbol trades on `shard` (the target, or the source when the move failed or was
       refused after route_begin). Must not fail: an authority that cannot record it now records
       it when it can (the engine's placement is the truth for its own symbols). Also called,
       without a route_begin, for a symbol listed while the engine runs (`crossbook symbol add`),
       once it is published: an id the router has not seen before (symbol_by_id finds it). */
    void (*route_end)(void *context, uint32_t symbol_id, uint32_t shard);

    /* Optional (a router whose struct ends before them, or leaves them NULL, moves no symbol
       between engines): a symbol moving to another engine (`crossbook migrate --to-instance`).
       The route is the commit point: exactly one of the two engines wins it.
       transfer_begin: the route of `symbol` names this engine, ACTIVE; it becomes MIGRATING to
         instance `to_instance`, its shard `to_shard` (epoch + 1, in *epoch). Anything else
         refuses, with the reason. The router tells the target engine (transfer_offered), which
         takes the book in by itself, wherever it runs.
       transfer_claim: the route of `symbol` is MIGRATING at `epoch`; it becomes ACTIVE on this
         engine's shard `shard` (epoch + 1). The target claims it once the book is on its disk (the
         move is done); the source claims it back to abandon the move. CB_OK: won;
         CB_ERR_FAILED: the route is not MIGRATING at that epoch (the other engine won, or
         someone changed it); CB_ERR_IO: the authority is unreachable (nothing changed).
       route_read: the route of `symbol` now (CB_ERR_NOT_FOUND: none; CB_ERR_IO: unreachable;
         CB_ERR_INVALID: it cannot be read, with why in `error`). */
    int (*transfer_begin)(void *context, const char *symbol, uint32_t shard, const char *to_instance, uint32_t to_shard,
                          uint64_t *epoch, char *error, size_t error_size);
    int (*transfer_claim)(void *context, const char *symbol, uint64_t epoch, uint32_t shard, char *error,
                          size_t error_size);
    int (*route_read)(void *context, const char *symbol, struct cb_route *out, char *error, size_t error_size);
} cb_router;

/* The size of a router without the transfer functions (routers built before them). */
#define CB_ROUTER_MIN_SIZE (offsetof(cb_router, route_end) + sizeof(void *))
static inline size_t cb_router_min_size(void) { return CB_ROUTER_MIN_SIZE; }

typedef struct cb_host cb_host; /* one per loaded plugin */
struct cb_host_api;             /* the host table, below */

/* ---- Leases --------------------------------------------------------------------------------- */

/* Leadership of a primary/standby pair ([replication] lease = KEY, lease_plugin = NAME): a lease
 * with a fencing token, held in a third party the plugin reaches (redis-routing: Redis). A lease
 * is not started like the rest of the plugin: the host calls `open` before the engine recovers,
 * whatever its role (a standby starts no other plugin before it is promoted), and `close` after
 * its shards stop; `start` and `stop` may come between them or not at all. From `open` to
 * `close`, the host calls config_get, log and monotonic_ns only. The host makes one call at a
 * time per lease, from its lease thread, its main thread or its replication thread, never from a
 * shard's. Each call must return within min(2 s, ttl_ms): a late answer is an error.
 *
 * The host's timing rule (README "Hot standby and failover") needs only this of a lease: an
 * acquire or renew that returns CB_OK guarantees that nobody else can acquire `key` before
 * ttl_ms have passed since the call began. */
typedef struct cb_lease_ops {
    uint32_t size; /* sizeof(cb_lease_ops) as the plugin was compiled */
    uint32_t reserved;
    /* Opens the lease client from the plugin's config (nothing is contacted yet); *lease is
       handed back to the other functions. */
    int (*open)(const struct cb_host_api *api, cb_host *host, void **lease, char *error, size_t error_size);
    /* Takes `key` for `holder` for ttl_ms, if nobody holds it, or extends it if `holder` does:
       CB_OK with *epoch, the fencing token (incremented for each new holder, never decreasing;
       the same for the holder's own re-acquire); CB_ERR_FAILED: another holder has it (`error`
       names it if it can); CB_ERR_IO: unreachable, no answer in time, or an answer that is not
       one of these (nothing known: `error` says what). */
    int (*acquire)(void *lease, const char *key, const char *holder, uint32_t ttl_ms, uint64_t *epoch, char *error,
                   size_t error_size);
    /* Extends `key` by ttl_ms if `holder` holds it: CB_OK; CB_ERR_FAILED: it is gone or
       another's (the holder is deposed); CB_ERR_IO: nothing known, as for acquire. */
    int (*renew)(void *lease, const char *key, const char *holder, uint32_t ttl_ms, char *error, size_t error_size);
    /* Closes what open opened (a held lease is left to expire). */
    void (*close)(void *lease);
} cb_lease_ops;

/* ---- The host table ------------------------------------------------------------------------- */

typedef struct cb_producer cb_producer;         /* a session: command rings to every shard */
typedef struct cb_subscription cb_subscription; /* a consumer of one shard's event ring */

typedef struct cb_host_api {
    uint32_t size;        /* sizeof(cb_host_api) as the host was compiled: see CB_HOST_HAS */
    uint32_t abi_version; /* CB_PLUGIN_ABI_VERSION */
    const char *host_version;

    /* Logging: one line, prefixed with the plugin's name, in the engine's log. */
    void (*log)(cb_host *host, int level, const char *message);

    /* The plugin's config section ([[plugins.load]] config = { ... }): the value of `key` as
       text (numbers and booleans as written), or NULL if absent. */
    const char *(*config_get)(cb_host *host, const char *key);

    /* Symbols. */
    int (*symbol_lookup)(cb_host *host, const char *name, cb_symbol *out);
    uint32_t (*shard_count)(cb_host *host);

    /* Producers: a session with its own rings; a command goes to the ring of its symbol's shard.
       submit returns CB_OK, CB_ERR_FULL (retry), CB_ERR_UNKNOWN_SYMBOL, or CB_ERR_CLOSED.
       Commands are checked by the shard: a bad one comes back as a rejected report. */
    int (*producer_open)(cb_host *host, cb_producer **out);
    int (*producer_submit)(cb_producer *producer, const cb_command *command);
    /* Copies up to `capacity` waiting reports to `out`; returns how many (>= 0) or an error. */
    int (*producer_poll)(cb_producer *producer, cb_report *out, int capacity);
    void (*producer_close)(cb_producer *producer);

    /* Subscriptions: market data of one shard, with this plugin's own cursor. A subscriber that
       lags past the engine's lag timeout is detached (poll then returns CB_ERR_CLOSED). */
    int (*subscribe)(cb_host *host, uint32_t shard, cb_subscription **out);
    int (*subscription_poll)(cb_subscription *subscription, cb_market_event *out, int capacity);
    void (*subscription_close)(cb_subscription *subscription);

    /* Counters: every metric of the engine, read from its counters region now. */
    int (*metrics_read)(cb_host *host, cb_metric_visitor visit, void *context);
    /* The plugin's own counter (type CB_METRIC_COUNTER or CB_METRIC_GAUGE): a 64-bit slot in the
       engine's counters region, shown by `crossbook stat` and exported with label
       plugin="<name>" and `help`. `name`: [a-z0-9_], optionally with labels of its own,
       base{key="value",...}, under 80 bytes; refused (CB_ERR_INVALID) when its family would
       repeat one of the engine's or another plugin's of the other type; CB_ERR_LIMIT when the
       64 slots are taken. Update it with __atomic_store_n / __atomic_fetch_add (relaxed). */
    int (*counter_register)(cb_host *host, const char *name, const char *help, uint32_t type,
                            uint64_t **slot);

    /* Snapshot stores (plugins of kind CB_KIND_SNAPSHOT_STORE, from start): the host copies
       the struct; `context` must stay valid until stop. */
    int (*snapshot_store_register)(cb_host *host, const cb_snapshot_store *store);

    /* Appended after the first release of v1 (check CB_HOST_HAS before calling):
       nanoseconds on CLOCK_MONOTONIC, the clock of the engine's timeouts. */
    uint64_t (*monotonic_ns)(cb_host *host);

    /* Appended with exactly-once ingress (check CB_HOST_HAS): a producer whose commands come from
       one partition of an ingress source (a Kafka topic: `source` is its name, UTF-8, 1 to 200
       bytes, no '#'). Every command it submits carries its offset in that partition in
       `client_sequence`. Each shard journals the binding before any command of the producer and
       keeps, per source partition, the last offset it applied (and, for a symbol that moved
       here, the symbol's own): a command at an offset its symbol applied already is a replay of
       the source, dropped unsequenced (no report: its outcome was given the first time), as is
       a command for a symbol another engine owns or is moving. The offset travels inside the
       journaled command, so a command and its position are durable together or not at all. */
    int (*producer_open_source)(cb_host *host, const char *source, uint32_t partition, cb_producer **out);
    /* Where `shard` resumes `source` partition `partition`, minus one: the last offset it
       journaled, or lower where a symbol that moved here is behind it (its floor): CB_OK with
       *offset, CB_ERR_NOT_FOUND if none. Resume each shard at *offset + 1: a message for a symbol
       of that shard at or below it is applied already (above it, the shard drops what it
       applied). */
    int (*source_position)(cb_host *host, uint32_t shard, const char *source, uint32_t partition, uint64_t *offset);
    /* The symbol whose engine id is `id` (a binary record names its symbol by id): as
       symbol_lookup. */
    int (*symbol_by_id)(cb_host *host, uint32_t id, cb_symbol *out);
    /* Exactly-once egress (plugins of kind CB_KIND_EGRESS only; check CB_HOST_HAS): two
       subscriptions of `shard`, `executions` (every execution report as a cb_execution, whoever
       it is for: the drop copy) and `market` (as `subscribe`), both starting above sequence
       `after`: first what the journal says, regenerated by a read-only replay beside the running
       engine (it may take a while: call it from the plugin's thread or from start), then live.
       `after` = UINT64_MAX: live only. A detached subscription (CB_ERR_CLOSED: it lagged) is
       reopened with the last sequence it delivered. Sync durability: only durable output. */
    int (*subscribe_output)(cb_host *host, uint32_t shard, uint64_t after, cb_subscription **executions,
                            cb_subscription **market);

    /* Appended with routing (check CB_HOST_HAS). The symbols of this engine: how many, and the
       one at `index` (0 ..< symbol_count), as symbol_lookup (its `shard` is where it lives now).
       The count grows as symbols are listed while the engine runs (never shrinks); symbol_lookup
       and symbol_by_id find a listed symbol from the moment it is published. */
    uint32_t (*symbol_count)(cb_host *host);
    int (*symbol_at)(cb_host *host, uint32_t index, cb_symbol *out);
    /* Registers the engine's router (plugins of kind CB_KIND_ROUTING, from start; one per
       engine: a second gets CB_ERR_LIMIT). The host copies the struct; `context` must stay
       valid until stop. The host stops calling it before it calls the plugin's stop. */
    int (*router_register)(cb_host *host, const cb_router *router);
    /* Moves symbol `symbol_id` to shard `shard` of this engine while it trades, as
       `crossbook migrate` does (the router is asked first); returns when it trades there
       (CB_OK) or the move was refused or failed (CB_ERR_FAILED, the reason in `error`). Blocks
       for up to a few seconds: call it from the plugin's own thread, never from start, stop,
       health or a router callback. */
    int (*symbol_migrate)(cb_host *host, uint32_t symbol_id, uint32_t shard, char *error, size_t error_size);
    /* A router saw the route of `symbol` MIGRATING to this engine at `epoch`, for its shard
       `shard`: the engine takes the book in (from the snapshot store's blob), claims the route
       and trades it, on a thread of its own; returns at once (CB_OK: taken up or already under
       way; CB_ERR_UNSUPPORTED: this engine takes no moves). */
    int (*transfer_offered)(cb_host *host, const char *symbol, uint64_t epoch, uint32_t shard);

    /* Appended with ingress that follows moves between engines (check CB_HOST_HAS). Engines that
       share a topic each read all of it and take the messages of their own symbols (the others'
       are CB_SYMBOL_ELSEWHERE). A symbol that arrives from another engine (or whose move away is
       undone) has messages this plugin skipped while it was elsewhere: its partitions are read
       again from where the other engine stopped. `ingress_generation` changes each time that
       happens; when it changed, call `source_rewind` for every partition the plugin reads, with
       `reached`, the last offset of it the plugin handled (UINT64_MAX: none yet): CB_OK with
       *offset (the symbols' floor) and the symbols it is for (*count of them, the first
       `capacity` written to `symbols`; CB_SYMBOL_ANY among them: read from the floor): if
       *offset <= reached, seek the partition back to *offset and read on from there, submitting
       as usual (a shard drops, unjournaled and unanswered, every command it applied already).
       A plugin that read the partition since before *offset and knows the first offset at which
       it skipped each of those symbols (CB_SYMBOL_ELSEWHERE) may seek to the lowest of those
       instead, or not at all if it skipped none of them there. CB_ERR_NOT_FOUND: nothing to
       read again there. A rewind is handed out once. Check the
       generation after symbol_lookup said a symbol is this engine's and before submitting its
       message: the host makes the rewind before the symbol: a message read after that check is
       never submitted ahead of the older ones the rewind brings back. */
    uint64_t (*ingress_generation)(cb_host *host);
    int (*source_rewind)(cb_host *host, const char *source, uint32_t partition, uint64_t reached, uint64_t *offset,
                         uint32_t *symbols, uint32_t capacity, uint32_t *count);

    /* Appended with watermarks (check CB_HOST_HAS). A shard's position in a partition moves only
       with the commands it takes; one whose symbols get nothing from a partition for a while
       keeps an old position there, and a restart reads the partition again from it. A producer
       opened with producer_open_source that has handled every message of its partition up to
       and including `offset` (submitted, skipped or dead-lettered, nothing in hand) tells
       `shard` so: the shard journals `offset` as its position if it took everything this
       producer submitted to it (else it ignores this one: send another later) and is behind.
       Returns at once: CB_OK (sent), CB_ERR_FULL (the shard's mailbox is full: later),
       CB_ERR_INVALID (not a source's producer, no such shard). Once a second per quiet shard
       is plenty. */
    int (*source_watermark)(cb_producer *producer, uint32_t shard, uint64_t offset);
} cb_host_api;

/* True when the host's table reaches `field` (a plugin built against a newer header). */
#define CB_HOST_HAS(api, field) \
    ((api) != NULL && (api)->size >= offsetof(cb_host_api, field) + sizeof((api)->field) && (api)->field != NULL)

/* ---- The plugin's descriptor ---------------------------------------------------------------- */

typedef struct cb_plugin {
    uint32_t size;        /* sizeof(cb_plugin) as the plugin was compiled */
    uint32_t abi_version; /* CB_PLUGIN_ABI_VERSION */
    const char *name;     /* [a-z0-9_-], at most 47 bytes */
    const char *version;  /* the plugin's own, e.g. "1.0.0" */
    uint32_t kinds;       /* CB_KIND_* bits */
    uint32_t flags;       /* 0 */
    /* Starts the plugin: read config, open what it needs, start its threads. `*instance` is the
       plugin's own pointer, handed back to stop and health. On failure return a cb_status and
       write a one-line reason into `error` (error_size bytes, NUL-terminated). */
    int (*start)(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t error_size);
    /* Stops: join the plugin's threads, close what it opened, free `instance`. */
    void (*stop)(void *instance);
    /* Returns a cb_health and may write a one-line message. May be NULL (always OK). */
    int (*health)(void *instance, char *message, size_t message_size);
    /* Appended with leases (a plugin whose descriptor ends before it, or leaves it NULL, has
       none): the lease this plugin offers (see cb_lease_ops). */
    const cb_lease_ops *lease;
} cb_plugin;

/* The size of the first v1 descriptor: a host accepts no smaller one. */
#define CB_PLUGIN_MIN_SIZE (offsetof(cb_plugin, health) + sizeof(void *))

typedef const cb_plugin *(*cb_plugin_entry_fn)(void);

/* A convenience, not part of the ABI (compiled into the plugin): copies `text` into a
 * message buffer of `size` bytes (start's error, health's message), cut and NUL-terminated. */
static inline void cb_copy_text(char *out, size_t size, const char *text) {
    if (out == NULL || size == 0) return;
    size_t n = 0;
    if (text != NULL)
        while (text[n] != 0 && n + 1 < size) { out[n] = text[n]; n++; }
    out[n] = 0;
}

#ifdef __cplusplus
}
#endif
#endif
