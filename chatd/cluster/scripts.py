"""
The Lua scripts that change the cluster's directory in Redis.

Each runs atomically in Redis (EVALSHA): it checks, writes and publishes the
change on the events channel in one step, so two nodes claiming one name at
once cannot both win, and every node sees the changes in Redis' own order.
Every event carries C{seq}, the value of the C{seq} counter the change took:
a node that loads the directory (the L{SNAPSHOT} script, which returns the
counter with it) skips the events it already holds.

The key layout is in docs/cluster.md. Some keys are built inside the scripts
from the prefix (a skeleton's set, a node's users): chatd needs a single
Redis server (or a primary with replicas), not Redis Cluster's hash slots.

An entry is the JSON of one online user: C{name}, C{key} (its nameKey),
C{skel} (its nameSkeleton), C{proto}, C{ip}, C{status}, C{node}, C{auth}
(whether its login checked a password), C{files} (whether its session takes
whole files) and C{seq} (the counter when it logged in: the login order).
"""

#: KEYS: names, the skeleton's set, the node's users, seq.
#: ARGV: key, entry JSON, authenticated ("1"/"0"), events channel.
#: Returns ["ok", seq], ["inuse", name, its node] or ["alike", name of the
#: first look-alike online].
CLAIM = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  local d = cjson.decode(existing)
  return {'inuse', d.name, d.node}
end
local first, firstSeq = nil, nil
local allAuthenticated = ARGV[3] == '1'
for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local other = redis.call('HGET', KEYS[1], k)
  if other then
    local d = cjson.decode(other)
    if firstSeq == nil or d.seq < firstSeq then first, firstSeq = d.name, d.seq end
    if not d.auth then allAuthenticated = false end
  else
    redis.call('SREM', KEYS[2], k)
  end
end
if first and not allAuthenticated then return {'alike', first} end
local seq = redis.call('INCR', KEYS[4])
local entry = cjson.decode(ARGV[2])
entry.seq = seq
local stored = cjson.encode(entry)
redis.call('HSET', KEYS[1], ARGV[1], stored)
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], '{"k":"login","seq":' .. seq .. ',"e":' .. stored .. '}')
return {'ok', tostring(seq)}
"""

#: KEYS: names, seq. ARGV: key, node, events channel, prefix.
#: Removes the entry only when that node owns it. Returns 1 or 0.
RELEASE = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then return 0 end
local entry = cjson.decode(stored)
if entry.node ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', ARGV[4] .. 'skel:' .. entry.skel, ARGV[1])
redis.call('SREM', ARGV[4] .. 'users:' .. entry.node, ARGV[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], '{"k":"logout","seq":' .. seq .. ',"e":' .. stored .. '}')
return 1
"""

#: KEYS: names, seq. ARGV: key, node, status, events channel.
#: Returns 1, or 0 when the node does not own the entry.
STATUS = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then return 0 end
local entry = cjson.decode(stored)
if entry.node ~= ARGV[2] then return 0 end
entry.status = ARGV[3]
stored = cjson.encode(entry)
redis.call('HSET', KEYS[1], ARGV[1], stored)
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], '{"k":"status","seq":' .. seq .. ',"e":' .. stored .. '}')
return 1
"""

#: KEYS: nodes, names, seq. ARGV: prefix, events channel, node or "".
#: With a node: removes that node's users at once (a node that stops, or
#: starts again under the same id). Without: removes the users of every
#: node whose heartbeat key is gone. Running it twice does nothing more.
#: Returns how many users were removed.
REAP = """
local removed = 0
local nodes
if ARGV[3] ~= '' then nodes = {ARGV[3]} else nodes = redis.call('SMEMBERS', KEYS[1]) end
for _, node in ipairs(nodes) do
  if ARGV[3] ~= '' or redis.call('EXISTS', ARGV[1] .. 'alive:' .. node) == 0 then
    local users = ARGV[1] .. 'users:' .. node
    for _, k in ipairs(redis.call('SMEMBERS', users)) do
      local stored = redis.call('HGET', KEYS[2], k)
      if stored then
        local entry = cjson.decode(stored)
        if entry.node == node then
          redis.call('HDEL', KEYS[2], k)
          redis.call('SREM', ARGV[1] .. 'skel:' .. entry.skel, k)
          local seq = redis.call('INCR', KEYS[3])
          redis.call('PUBLISH', ARGV[2], '{"k":"logout","seq":' .. seq .. ',"e":' .. stored .. '}')
          removed = removed + 1
        end
      end
    end
    redis.call('DEL', users)
    redis.call('SREM', KEYS[1], node)
  end
end
return removed
"""

#: KEYS: seq, names. Returns [seq, entry JSON...]: the whole directory and
#: the counter it is current to, read at one instant.
SNAPSHOT = """
local seq = redis.call('GET', KEYS[1]) or '0'
local result = {tostring(seq)}
for _, stored in ipairs(redis.call('HVALS', KEYS[2])) do
  result[#result + 1] = stored
end
return result
"""
