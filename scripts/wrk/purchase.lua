-- wrk script: POST purchases, each request with the next buyer token from
-- the file named by $TOKENS (one JWT per line, `flashsale token --count N`),
-- against the sale in $SALE_ID. Counts answers by status.
--   TOKENS=/tmp/tokens SALE_ID=123 wrk -t1 -c64 -d10s -s scripts/wrk/purchase.lua http://127.0.0.1:8080
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local path = "/api/v1/sales/" .. os.getenv("SALE_ID") .. "/purchase"
local i = 0
local statuses = {}

request = function()
  i = i % #tokens + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, "")
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  -- Each wrk thread has its own Lua state; this reports thread 1's view.
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
