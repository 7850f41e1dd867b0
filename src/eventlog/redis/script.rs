//! The Lua scripts Herald runs in Redis: each one is atomic there, so a
//! batch lands in the flow and in its audiences' streams together.

/// Appends a batch of events atomically: each to the shared flow (Redis
/// assigns its id there) and, under the same id, to the stream of each of its
/// audiences, which keeps that audience's retention: its newest
/// `per_audience` entries, none older than the TTL, and the key itself
/// expires a TTL after its last event.
///
/// What each audience stream trims is recorded in one hash (audience key →
/// newest id trimmed), since Redis itself keeps no record of trimmed ids;
/// a node that starts reads it to tell `recovered` exactly.
///
/// With an `Idempotency-Key` (ARGV[5] not empty) the script first looks for
/// the key's record (KEYS[3]): when there is one it appends nothing and
/// answers `{'seen', record}`; otherwise it appends, records
/// `fingerprint \n recipients \n batch \n ids` for ARGV[6] ms, and answers
/// `{'', ids…}`. Check and record are in the one script, so two nodes given
/// the same key at once never both publish.
///
/// KEYS: the flow, the trimmed-ids hash, the idempotency record (named even
/// when unused), then every audience stream the batch names. ARGV: flow
/// length, per-audience count (0: no audience streams), oldest id kept, TTL
/// in ms, the idempotency record's first lines (empty: no key), its TTL in
/// ms, then per event: name, data, users, channels (empty strings for a
/// broadcast), its number of audiences, and their indexes into KEYS.
pub(super) const PUBLISH_SCRIPT: &str = r"
local flow_len, per_audience, min_id, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local remember = ARGV[5]
if remember ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {'seen', seen} end
end
local ids = {''}
local at = 7
while at <= #ARGV do
  local fields = {'event', ARGV[at], 'data', ARGV[at + 1]}
  if ARGV[at + 2] ~= '' or ARGV[at + 3] ~= '' then
    table.insert(fields, 'users'); table.insert(fields, ARGV[at + 2])
    table.insert(fields, 'channels'); table.insert(fields, ARGV[at + 3])
  end
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', flow_len, '*', unpack(fields))
  local audiences = tonumber(ARGV[at + 4])
  for i = 1, audiences do
    if per_audience > 0 then
      local key = KEYS[tonumber(ARGV[at + 4 + i])]
      local excess = redis.call('XLEN', key) + 1 - per_audience
      if excess > 0 then
        local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
        if #gone > 0 then redis.call('HSET', KEYS[2], key, gone[#gone][1]) end
      end
      redis.call('XADD', key, 'MAXLEN', per_audience, id, unpack(fields))
      local aged = redis.call('XREVRANGE', key, '(' .. min_id, '-', 'COUNT', 1)
      if #aged > 0 then
        redis.call('HSET', KEYS[2], key, aged[1][1])
        redis.call('XTRIM', key, 'MINID', min_id)
      end
      redis.call('PEXPIRE', key, ttl)
    end
  end
  table.insert(ids, id)
  at = at + 5 + audiences
end
if per_audience > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if remember ~= '' then
  redis.call('SET', KEYS[3], remember .. '\n' .. table.concat(ids, ',', 2), 'PX', ARGV[6])
end
return ids
";

/// Reads, for each audience stream in KEYS[2..], the newest id it trimmed
/// (from the hash KEYS[1]; `''` when none) and its entries up to ARGV[1].
pub(super) const READ_AUDIENCES_SCRIPT: &str = r"
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local trimmed = redis.call('HGET', KEYS[1], key)
  if not trimmed then trimmed = '' end
  out[i - 1] = {trimmed, redis.call('XRANGE', key, '-', ARGV[1])}
end
return out
";

/// Forgets the trimmed ids of audience streams that have expired (all they
/// held was older than the TTL, which a starting node's horizon covers), so
/// the hash stays as small as the set of live audiences.
pub(super) const FORGET_EXPIRED_SCRIPT: &str = r"
local forgotten = 0
for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', key) == 0 then
    redis.call('HDEL', KEYS[1], key)
    forgotten = forgotten + 1
  end
end
return forgotten
";
