-- wrk script for the benchmark: every request is a distinct buyer (its own email, and its own address in
-- X-Forwarded-For, believed by a server with TRUSTED_PROXIES=1), so the rate limits are checked on
-- every request and never trigger; statuses counted.
--   wrk -t2 -c200 -d10s -s bench/load.lua http://127.0.0.1:PORT -- METHOD TAG PATH [PATH ...]
-- METHOD is GET, POST (a hold: email and quantity) or JOIN (POST a waiting room's {"email"} only);
-- TAG makes emails unique across runs; requests cycle over the PATHs.
-- done() prints one line: "BENCHJSON {...}" with counts by status and latency percentiles (ms).

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  method, tag = args[1], args[2]
  paths = {}
  for i = 3, #args do paths[#paths + 1] = args[i] end
  counter = 0
  statuses = {}
  -- Addresses 10.x.y.z: thread tid owns a block of 2^22 from a base the tag picks, so the scenarios
  -- of a run (each with its own tag) rarely reuse an address within the limits' minute.
  base = 0
  for i = 1, #tag do base = (base * 31 + tag:byte(i)) % 4194304 end
end

local function address(n)
  local a = (base + (tid - 1) * 4194304 + n) % 16777216
  return string.format("10.%d.%d.%d", math.floor(a / 65536), math.floor(a / 256) % 256, a % 256)
end

function request()
  counter = counter + 1
  local path = paths[(counter % #paths) + 1]
  local headers = {["X-Forwarded-For"] = address(counter)}
  if method == "GET" then
    return wrk.format("GET", path, headers)
  end
  headers["Content-Type"] = "application/json"
  local body = string.format('{"email": "b%s.%d.%d@bench.example", "quantity": 1}', tag, tid, counter)
  if method == "JOIN" then
    body = string.format('{"email": "b%s.%d.%d@bench.example"}', tag, tid, counter)
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do parts[#parts + 1] = string.format('"%d": %d', status, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_s": %.3f, "requests": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"mean_ms": %.2f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    summary.duration / 1e6, summary.requests, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout, latency.mean / 1000,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
