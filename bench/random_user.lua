-- wrk script of the benchmark: POST one JSON body with a random X-User-Id per request, and print
-- the summary as one JSON line ("BENCH_JSON {...}") for bench/run.py to read.
-- The request is built once around a placeholder and only the user id changes per request, so
-- the generator stays cheap next to the servers it measures. With BENCH_UNITS=N in the environment
-- the ids are drawn from N units (the same N every run: u0000000000000000 ...) instead of all new.

local prefix, suffix, units
local placeholder = "@@BENCH_USER@@"

init = function(args)
  math.randomseed(os.time())
  units = tonumber(os.getenv("BENCH_UNITS") or "")
  if units and units < 1 then error("BENCH_UNITS must be at least 1") end
  wrk.method = "POST"
  wrk.body = os.getenv("BENCH_BODY") or '{"instances": [[12.0, 70.5, 1.0, 0.1]]}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-User-Id"] = placeholder
  local template = wrk.format()
  local at = template:find(placeholder, 1, true)
  prefix = template:sub(1, at - 1)
  suffix = template:sub(at + #placeholder)
end

request = function()
  if units then
    return prefix .. string.format("u%016x", math.random(0, units - 1)) .. suffix
  end
  return prefix .. string.format("u%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)) .. suffix
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency.max))
end
