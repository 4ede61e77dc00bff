"""Lua scripts: each cache operation is one round trip, and read-modify-write is atomic.

Plain hits do not use them (a native ``MGET`` is cheaper for the server); ``READ`` serves
the reads that also need the value's remaining TTL (local tier, serve-stale). Every key a
script touches is one of its KEYS, as Redis Cluster requires; how a data key is named
before its group's generation is read is explained in ``_keys``.
"""

from __future__ import annotations

# A script that publishes does so before it changes anything: Redis does not undo a
# script that fails midway, and PUBLISH is the command most likely to be refused (an ACL
# user without channel permissions, Redis 7's default for new users). A change made
# before a refused PUBLISH would stay, unannounced to the local tiers, while the caller
# is told it failed; a PUBLISH made before a refused change costs a needless drop.

# A group without a generation key (never written, or the key was evicted or lost in a
# restart) has the generation '': no value is ever stored under it, so reads miss. The
# scripts that store create the key with a random start the client sends (ARGV
# "fresh"): a generation evicted and created again never repeats an earlier one, so a
# value invalidated before the eviction can never be addressed again.

# KEYS[1] generation key, KEYS[2] data key of the guessed generation.
# ARGV[1] the guessed generation.
# Returns "GENERATION PTTL VALUE" when the value is there, else "GENERATION": absent, or,
# when GENERATION is not the one guessed, the group moved on (nothing was read). One bulk
# string is cheaper for the client to parse than an array.
READ = """
local generation = redis.call('GET', KEYS[1]) or ''
if generation ~= ARGV[1] then
  return generation
end
local value = redis.call('GET', KEYS[2])
if not value then
  return generation
end
return generation .. ' ' .. redis.call('PTTL', KEYS[2]) .. ' ' .. value
"""

# KEYS[1] generation key, KEYS[2] lease key, KEYS[3] data key of generation ARGV[3].
# ARGV[1] JSON value, ARGV[2] PX milliseconds, ARGV[3] the generation to write to,
# ARGV[4] the kind of write:
#   "1" an explicit set (it revokes any lease: a load in flight holds older data; and it
#       is meant for the current generation);
#   "0" a loader's write under its lease ARGV[5] (refused once the lease is not its own:
#       a set, delete or invalidation revoked it; or if the group moved on);
#   "2" a loader's write without the lease, by a process that gave up waiting for the
#       holder ARGV[5]: refused unless that same holder still holds the lease (a set,
#       delete or invalidation since the wait began revoked it: every later lease has
#       another token) and nothing is stored yet; the lease is left to its holder.
# ARGV[5] lease token, ARGV[6] channel, ARGV[7] message to publish ('' = none),
# ARGV[8] fresh generation (for a group without one).
# Returns the integer 1 when written; the integer 0 when refused; for an explicit set to
# a generation that moved on, the current generation as a string (nothing written):
# write again to that one.
WRITE = """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[8]
  redis.call('SET', KEYS[1], generation)
end
local revokes = ARGV[4] == '1' or (ARGV[4] == '0' and ARGV[5] ~= '')
if ARGV[4] == '2' then
  if redis.call('GET', KEYS[2]) ~= ARGV[5] or redis.call('EXISTS', KEYS[3]) == 1 then
    return 0
  end
elseif ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return 0
end
if ARGV[3] ~= generation then
  if revokes then
    redis.call('DEL', KEYS[2])
  end
  if ARGV[4] == '1' then
    return generation
  end
  return 0
end
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if revokes then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] generation key, KEYS[2] lease key, KEYS[3] data key of the guessed generation.
# ARGV[1] the guessed generation, ARGV[2] channel, ARGV[3] the key's invalidation message
# (JSON), published with the count deleted: in the same step as the delete, so that no
# delete is ever applied without its broadcast.
# Deletes the current value and revokes a load in flight; returns the integer number
# deleted, or, when the group moved on, the current generation as a string (nothing
# done): delete again with that one.
DELETE = """
local generation = redis.call('GET', KEYS[1]) or ''
if generation ~= ARGV[1] then
  return generation
end
local deleted = redis.call('EXISTS', KEYS[3])
local message = cjson.decode(ARGV[3])
message['count'] = deleted
redis.call('PUBLISH', ARGV[2], cjson.encode(message))
redis.call('DEL', KEYS[2])
redis.call('UNLINK', KEYS[3])
return deleted
"""

# KEYS: one SCAN page's data and lease keys of an invalidated pattern. ARGV[1] channel,
# ARGV[2] the pattern's invalidation message: published in the same step as the keys
# are removed, so that every page removed is broadcast. Returns how many were removed.
UNLINK_AND_PUBLISH = """
redis.call('PUBLISH', ARGV[1], ARGV[2])
local removed = 0
for first = 1, #KEYS, 500 do
  removed = removed + redis.call('UNLINK', unpack(KEYS, first, math.min(first + 499, #KEYS)))
end
return removed
"""

# KEYS[1] generation key. ARGV[1] channel, ARGV[2] message (JSON), published with the new
# generation added, so that the other processes address the group's keys with it at once;
# ARGV[3] fresh generation (for a group without one). Returns the new generation.
BUMP_GENERATION = """
local current = redis.call('GET', KEYS[1])
local generation = tonumber(ARGV[3])
if current then
  generation = tonumber(current) + 1
end
local message = cjson.decode(ARGV[2])
message['generation'] = generation
redis.call('PUBLISH', ARGV[1], cjson.encode(message))
if current then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[3])
return generation
"""

# KEYS[1] lease key. ARGV[1] token, ARGV[2] what the loader's failure leaves in the lease
# ('' = nothing), ARGV[3] for how long (PX milliseconds). Only if this token still holds
# the lease: deletes it, or replaces it by the failure, which the processes waiting for
# this load read as its outcome (rather than each loading in turn and failing too).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  return redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
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

# KEYS[1] generation key, KEYS[2] lease key, KEYS[3] data key of the guessed generation.
# ARGV[1] the guessed generation, ARGV[2] lease token, ARGV[3] lease PX milliseconds,
# ARGV[4] fresh generation (for a group without one: the value loaded is stored to it).
# The value if it is there, else the lease if it is free: one atomic step, so that a
# waiter can never take the lease just after the loader stored the value and released it.
# Returns one bulk string (cheaper for the client to parse than an array, on every miss):
# "GENERATION V PTTL VALUE" when the value is there, "GENERATION L" when the lease was
# taken, "GENERATION H HOLDER" when another holds it (HOLDER: its token, or the failure
# it left); or, when the group moved on, "GENERATION" alone (no lease taken): ask again.
READ_OR_LEASE = """
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[4]
  redis.call('SET', KEYS[1], generation)
end
if generation ~= ARGV[1] then
  return generation
end
local value = redis.call('GET', KEYS[3])
if value then
  return generation .. ' V ' .. redis.call('PTTL', KEYS[3]) .. ' ' .. value
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return generation .. ' L'
end
return generation .. ' H ' .. (redis.call('GET', KEYS[2]) or '')
"""
