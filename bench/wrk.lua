-- wrk script for bench/run. Every request is pre-formatted in init(), so the load generator
-- spends its time on the socket, not in Lua. No response() callback (it would slow wrk down).
--
--   wrk … -s bench/wrk.lua URL -- MODE ARGS…
--   get     PATH                                  fixed GET, no credentials (the reference)
--   me      KEYFILE                               GET /api/users/@me/, keys round-robin
--   patch   KEYFILE                               PATCH /api/users/@me/ theme_mode dark/light
--   list    STAFFKEYFILE PATH                     GET PATH with the staff key
--   email   STAFFKEYFILE USERS PREFIX DOMAIN      GET /api/users/?email=<random existing user>
--   login   USERS PREFIX DOMAIN PASSWORD          POST /api/login/ as random users
--
-- done() prints one line starting with WRKRESULT that bench/run parses.

local reqs = {}
local n = 0
local i = 0
local SAMPLES = 10000

local function read_lines(path)
  local out = {}
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then
      out[#out + 1] = line
    end
  end
  f:close()
  return out
end

local function bearer(key)
  return { ["Authorization"] = "Bearer " .. key }
end

function init(args)
  -- A different sequence per thread and per run.
  math.randomseed(os.time() + tonumber(string.match(tostring({}), "0x(%x+)") or "0", 16) % 100000)
  local mode = args[1]
  if mode == "get" then
    reqs[1] = wrk.format("GET", args[2])
  elseif mode == "me" then
    for _, key in ipairs(read_lines(args[2])) do
      reqs[#reqs + 1] = wrk.format("GET", "/api/users/@me/", bearer(key))
    end
  elseif mode == "patch" then
    local keys = read_lines(args[2])
    for _, theme in ipairs({ "dark", "light" }) do
      for _, key in ipairs(keys) do
        local h = bearer(key)
        h["Content-Type"] = "application/json"
        reqs[#reqs + 1] = wrk.format("PATCH", "/api/users/@me/", h, '{"theme_mode":"' .. theme .. '"}')
      end
    end
  elseif mode == "list" then
    local key = read_lines(args[2])[1]
    reqs[1] = wrk.format("GET", args[3], bearer(key))
  elseif mode == "email" then
    local key = read_lines(args[2])[1]
    local users, prefix, domain = tonumber(args[3]), args[4], args[5]
    for _ = 1, SAMPLES do
      local id = math.random(users)
      reqs[#reqs + 1] = wrk.format("GET", "/api/users/?email=" .. prefix .. id .. "%40" .. domain, bearer(key))
    end
  elseif mode == "login" then
    local users, prefix, domain, password = tonumber(args[2]), args[3], args[4], args[5]
    for _ = 1, SAMPLES do
      local id = math.random(users)
      local body = '{"email":"' .. prefix .. id .. "@" .. domain .. '","password":"' .. password .. '"}'
      reqs[#reqs + 1] = wrk.format("POST", "/api/login/", { ["Content-Type"] = "application/json" }, body)
    end
  else
    error("unknown mode " .. tostring(mode))
  end
  n = #reqs
  assert(n > 0, "no requests prepared")
  i = math.random(n) - 1
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
