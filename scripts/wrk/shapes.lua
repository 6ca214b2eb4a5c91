-- wrk script: sold-out purchases in the request shapes buyers send, each
-- request with the next of the buyer tokens in $TOKENS (one JWT per line,
-- `flashsale token --count N`), against the sale $SALE_ID. $SHAPE is one of
--   nobody  no body (Content-Length: 0)
--   json    {"quantity":1} with Content-Type: application/json
--   fresh   the JSON body and an Idempotency-Key never sent before
--           (unique per request; $NONCE keeps runs apart)
--   replay  the JSON body and the key "replay-<buyer>", the same for every
--           request of a buyer (after a warm-up, every request is a replay)
--   healthz GET /healthz, through this same script: the ceiling the
--           shapes are compared with pays wrk's per-request script call
--           too (wrk sends a script-less run's one request without it)
-- Requests are formatted once at start (all but the fresh key), so wrk
-- spends little more per request than for a static one.
--   TOKENS=/tmp/tokens SALE_ID=123 SHAPE=json wrk -t1 -c64 -d10s -s scripts/wrk/shapes.lua http://127.0.0.1:8080
local shape = os.getenv("SHAPE") or "nobody"
local nonce = os.getenv("NONCE") or tostring(os.time())
local path = "/api/v1/sales/" .. os.getenv("SALE_ID") .. "/purchase"
local body = '{"quantity":1}'
local heads, tails = {}, {}
local n = 0
for token in io.lines(os.getenv("TOKENS")) do
  n = n + 1
  local head = "POST " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " .. token .. "\r\n"
  if shape == "healthz" then
    heads[n] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
  elseif shape == "nobody" then
    heads[n] = head .. "Content-Length: 0\r\n\r\n"
  else
    head = head .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n"
    if shape == "json" then
      heads[n] = head .. "\r\n" .. body
    elseif shape == "replay" then
      heads[n] = head .. "Idempotency-Key: replay-" .. n .. "\r\n\r\n" .. body
    elseif shape == "fresh" then
      heads[n] = head .. "Idempotency-Key: " .. nonce .. "-"
      tails[n] = "\r\n\r\n" .. body
    else
      error("unknown SHAPE " .. shape)
    end
  end
end
local i = 0
local sent = 0

if shape == "fresh" then
  request = function()
    i = i % n + 1
    sent = sent + 1
    return heads[i] .. sent .. tails[i]
  end
else
  request = function()
    i = i % n + 1
    return heads[i]
  end
end
