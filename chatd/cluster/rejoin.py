"""
What a node does when its connection to the cluster's Redis comes back
after an outage (docs/cluster.md, "Failures").

Redis may have lost everything (restarted empty), or kept a directory that
went on without this node (its heartbeat lapsed and another node reaped its
users; users of other nodes logged in, possibly with names this node still
holds). The node still has its users, so it re-announces them, all in one
atomic script, L{REANNOUNCE}:

  - a user whose entry is still this node's is written again with what it
    is now (a status changed during the outage is published then);
  - a user whose entry is gone is claimed again;
  - entries of this node that it no longer has (users who logged out during
    the outage) are removed, with a logout published for each;
  - a name (or a look-alike) held by a user of another node is a conflict
    from the split, settled by L{the rule <earlier>}: the login that came
    first keeps the name (by login time, the entry's C{t}, in milliseconds
    of the nodes' clocks), and of two logins in the same millisecond the
    one of the node whose id sorts first. The loser's entry is removed with
    a logout whose event says C{"why": "conflict"}, so its node disconnects
    it with L{CONFLICT_REASON}; when the loser is this node's user, the
    script leaves the other's entry alone and says so, and this node
    disconnects its own.
"""

from __future__ import annotations

import json

#: KEYS: names, seq, this node's users. ARGV: prefix, events channel, node,
#: JSON list of this node's entries (each with C{t}, its login time).
#: Returns, per entry in order, C{[key, "ok", seq]} or C{[key, "lost",
#: winner's name]}.
REANNOUNCE = """
local prefix, channel, node = ARGV[1], ARGV[2], ARGV[3]
local entries = cjson.decode(ARGV[4])
local function earlier(a, b)
  -- The rule: the earlier login keeps the name; ties by node id.
  local ta, tb = tonumber(a.t) or 0, tonumber(b.t) or 0
  if ta ~= tb then return ta < tb end
  return tostring(a.node) < tostring(b.node)
end
local function remove(key, stored, why)
  local d = cjson.decode(stored)
  redis.call('HDEL', KEYS[1], key)
  redis.call('SREM', prefix .. 'skel:' .. d.skel, key)
  redis.call('SREM', prefix .. 'users:' .. d.node, key)
  local seq = redis.call('INCR', KEYS[2])
  local event = '{"k":"logout","seq":' .. seq .. ',"e":' .. stored
  if why then event = event .. ',"why":"' .. why .. '"' end
  redis.call('PUBLISH', channel, event .. '}')
end
local mine = {}
for _, e in ipairs(entries) do mine[e.key] = true end
-- Users this node no longer has (they left during the outage).
for _, k in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not mine[k] then
    local stored = redis.call('HGET', KEYS[1], k)
    if stored and cjson.decode(stored).node == node then remove(k, stored, nil) end
    redis.call('SREM', KEYS[3], k)
  end
end
local result = {}
for _, e in ipairs(entries) do
  local key = e.key
  local stored = redis.call('HGET', KEYS[1], key)
  local rivals, lostTo = {}, nil
  if stored then
    local d = cjson.decode(stored)
    if d.node ~= node then
      if earlier(d, e) then lostTo = d.name else rivals[#rivals + 1] = {key, stored} end
    end
  end
  if not lostTo then
    for _, k in ipairs(redis.call('SMEMBERS', prefix .. 'skel:' .. e.skel)) do
      if k ~= key then
        local other = redis.call('HGET', KEYS[1], k)
        if not other then
          redis.call('SREM', prefix .. 'skel:' .. e.skel, k)
        else
          local d = cjson.decode(other)
          -- Look-alikes may share a skeleton when every one checked a
          -- password (MSGR accounts), as the claim script allows.
          if d.node ~= node and not (e.auth and d.auth) then
            if earlier(d, e) then lostTo = d.name; break end
            rivals[#rivals + 1] = {k, other}
          end
        end
      end
    end
  end
  if lostTo then
    if stored and cjson.decode(stored).node == node then remove(key, stored, nil) end
    result[#result + 1] = {key, 'lost', lostTo}
  else
    for _, r in ipairs(rivals) do remove(r[1], r[2], 'conflict') end
    local old = redis.call('HGET', KEYS[1], key)
    local seq
    if old then
      local d = cjson.decode(old)
      e.seq = d.seq
      seq = d.seq
      local changed = d.status ~= e.status
      local now = cjson.encode(e)
      redis.call('HSET', KEYS[1], key, now)
      if changed then
        local s = redis.call('INCR', KEYS[2])
        redis.call('PUBLISH', channel, '{"k":"status","seq":' .. s .. ',"e":' .. now .. '}')
      end
    else
      seq = redis.call('INCR', KEYS[2])
      e.seq = seq
      local now = cjson.encode(e)
      redis.call('HSET', KEYS[1], key, now)
      redis.call('PUBLISH', channel, '{"k":"login","seq":' .. seq .. ',"e":' .. now .. '}')
    end
    redis.call('SADD', prefix .. 'skel:' .. e.skel, key)
    redis.call('SADD', KEYS[3], key)
    result[#result + 1] = {key, 'ok', tostring(seq)}
  end
end
return result
"""

#: What a user who lost its name to the rule is told, in its protocol's
#: disconnect (docs/cluster.md).
CONFLICT_REASON = (
    "the name {name} was also taken on another node while the cluster was"
    " split; the earlier login keeps it"
)


def conflictReason(name: str) -> str:
    """The reason a session that lost its name to the rule is given."""
    return CONFLICT_REASON.format(name=name)


def reannounce(connection, names: str, seqKey: str, events: str, entries: list[dict]):
    """
    Run L{REANNOUNCE} for this node's C{entries} (the entry dicts of
    docs/cluster.md, each with its login time C{t}).

    @return: a Deferred firing with C{{key: ("ok", seq) | ("lost", winner)}}.
    """
    d = connection.evalScript(
        REANNOUNCE,
        [names, seqKey, connection.key("users", connection.nodeId)],
        [
            connection.prefix,
            events,
            connection.nodeId,
            json.dumps(entries, ensure_ascii=False),
        ],
    )

    def parsed(reply):
        outcomes = {}
        for key, outcome, detail in reply:
            key, outcome, detail = (_text(v) for v in (key, outcome, detail))
            outcomes[key] = (outcome, int(detail) if outcome == "ok" else detail)
        return outcomes

    return d.addCallback(parsed)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
