-- wrk script for bench_serving.py: POST the JSON body in $WRK_BODY_FILE to the URL's path,
-- count every answer that is not 2xx (by status), and print one JSON line when done.
--   WRK_BODY_FILE=body.json wrk -t1 -c32 -d8s -s post.lua http://127.0.0.1:3000/predict

local path = os.getenv("WRK_BODY_FILE")
local f = assert(io.open(path, "rb"), "WRK_BODY_FILE: cannot open " .. tostring(path))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  statuses = {}
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local non2xx_total = 0
  local merged = {}
  for _, t in ipairs(threads) do
    non2xx_total = non2xx_total + t:get("non2xx")
    for k, v in pairs(t:get("statuses")) do
      merged[k] = (merged[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
    '"statuses": {%s}, "connect": %d, "read": %d, "write": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, non2xx_total,
    table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
