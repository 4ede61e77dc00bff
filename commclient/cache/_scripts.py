"""Lua scripts: each cache operation is one round trip, and read-modify-write is atomic.

Plain hits do not use them (a native ``MGET`` is cheaper for the server, see ``_keys``);
``READ`` serves the reads that also need the value's remaining TTL (local tier, serve-stale).

Every script is given its generation and lease keys as KEYS (so a cluster client routes
it), and builds the data key from the group's generation it reads: the data key cannot be
named in advance without a second round trip whenever a group moves. All of a cache's
keys carry the hash tag ``{prefix}`` (see ``_keys``), so the data key is in the same slot
as the declared keys and on the same node: the scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

# KEYS[1] generation key. ARGV[1] data key without generation, ARGV[2] "1" to return PTTL.
# Returns "GENERATION PTTL VALUE" when the value is there (PTTL -2 when not asked for),
# else "GENERATION": one bulk string is cheaper for the client to parse than an array,
# and this is the script of every cache hit.
READ = """
local generation = redis.call('GET', KEYS[1]) or '0'
local data_key = ARGV[1] .. generation
local value = redis.call('GET', data_key)
if not value then
  return generation
end
local pttl = -2
if ARGV[2] == '1' then
  pttl = redis.call('PTTL', data_key)
end
return generation .. ' ' .. pttl .. ' ' .. value
"""

# KEYS[1] generation key, KEYS[2] lease key.
# ARGV[1] data key without generation, ARGV[2] JSON value, ARGV[3] PX milliseconds,
# ARGV[4] generation the value was loaded under ('' = current),
# ARGV[5] lease token the writer must still hold ('' = none),
# ARGV[6] "1" to revoke any lease (an explicit set: a load in flight holds older data),
# ARGV[7] channel, ARGV[8] message to publish ('' = none).
# Returns 1 when written, 0 when refused because the group or the lease moved on.
WRITE = """
local generation = redis.call('GET', KEYS[1]) or '0'
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[5] then
    return 0
  end
  redis.call('DEL', KEYS[2])
elseif ARGV[6] == '1' then
  redis.call('DEL', KEYS[2])
end
if ARGV[4] ~= '' and ARGV[4] ~= generation then
  return 0
end
redis.call('SET', ARGV[1] .. generation, ARGV[2], 'PX', ARGV[3])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return 1
"""

# KEYS[1] generation key, KEYS[2] lease key. ARGV[1] data key without generation.
# Deletes the current value and revokes a load in flight; returns the number deleted.
DELETE = """
local generation = redis.call('GET', KEYS[1]) or '0'
redis.call('DEL', KEYS[2])
return redis.call('UNLINK', ARGV[1] .. generation)
"""

# KEYS[1] generation key. ARGV[1] channel, ARGV[2] message. Returns the new generation.
BUMP_GENERATION = """
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return generation
"""

# KEYS[1] lease key. ARGV[1] token. Deletes the lease only if this token still holds it.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] lease key. ARGV[1] token, ARGV[2] PX milliseconds. Extends the lease only if
# this token still holds it (a revoked lease stays revoked).
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] data key. ARGV[1] the corrupt value that was read. Deletes the key only if it
# still holds that value: a valid value written meanwhile by another process survives.
DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] generation key, KEYS[2] lease key.
# ARGV[1] data key without generation, ARGV[2] lease token, ARGV[3] lease PX milliseconds.
# The value if it is there, else the lease if it is free: one atomic step, so that a
# waiter can never take the lease just after the loader stored the value and released it.
# Returns {generation, value or nil, pttl, 1 if the lease was taken else 0}.
READ_OR_LEASE = """
local generation = redis.call('GET', KEYS[1]) or '0'
local data_key = ARGV[1] .. generation
local value = redis.call('GET', data_key)
if value then
  return {generation, value, redis.call('PTTL', data_key), 0}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {generation, false, -2, 1}
end
return {generation, false, -2, 0}
"""
