/* The one way a route changes in Redis, shared by the redis-routing plugin and the
 * crossbook-route tool: a compare-and-set on the route's epoch, in one Lua script (atomic in
 * Redis), that also publishes the change as a hint.
 *
 *   KEYS[1]  <prefix>route:<SYMBOL>   a hash: instance, shard, status (ACTIVE | MIGRATING), epoch
 *   ARGV[1]  the epoch the caller read ("0": the route must not exist)
 *   ARGV[2]  instance   ARGV[3] shard   ARGV[4] status
 *   ARGV[5]  the channel of change hints (<prefix>routes)
 *   ARGV[6]  optional: MIGRATING to another instance, that instance (field `to`); absent or "":
 *            the field goes (every other change clears it)
 *   ARGV[7]  optional: "M": the route must be MIGRATING (a transfer's claim)
 *   ARGV[8]  optional, with ARGV[6]: the target's shard (field `to_shard`)
 *
 * Returns {1, new epoch} when the caller's epoch was the route's (the route is written with
 * epoch + 1 and "<key> <epoch>" is published), else {0, the route's epoch}: of two tools racing
 * from the same epoch exactly one wins. A route whose epoch is not a whole number is never
 * written (fix it by hand: DEL the key). */
#ifndef CROSSBOOK_ROUTE_CAS_H
#define CROSSBOOK_ROUTE_CAS_H

static const char route_cas_script[] =
    "local cur = redis.call('HGET', KEYS[1], 'epoch')\n"
    "if cur == false then cur = '0' end\n"
    "if cur ~= ARGV[1] or not string.match(cur, '^%d+$') then return {0, cur} end\n"
    "if ARGV[7] == 'M' and redis.call('HGET', KEYS[1], 'status') ~= 'MIGRATING' then return {0, cur} end\n"
    "local n = tonumber(cur) + 1\n"
    "redis.call('HSET', KEYS[1], 'instance', ARGV[2], 'shard', ARGV[3], 'status', ARGV[4], 'epoch', tostring(n))\n"
    "if ARGV[6] ~= nil and ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'to', ARGV[6], 'to_shard', ARGV[8] or '0')\n"
    "else redis.call('HDEL', KEYS[1], 'to', 'to_shard') end\n"
    "redis.call('PUBLISH', ARGV[5], KEYS[1] .. ' ' .. tostring(n))\n"
    "return {1, tostring(n)}\n";

#endif
